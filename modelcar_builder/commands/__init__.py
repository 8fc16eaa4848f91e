"""One module per `modelcar` command: each parses its options into settings values and
calls the pipeline; cli.py registers them."""
