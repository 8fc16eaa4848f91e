"""Makes ``python3 -m scripts.bench`` find this directory even if some installed
distribution ships a top-level ``scripts`` package: a regular package on the path first
(the repository root, the current directory under ``-m``) wins, a namespace one would not."""
