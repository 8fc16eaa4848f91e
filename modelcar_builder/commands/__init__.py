"""One module per `modelcar` command: each turns its click options into the API's carriers
(``commands/options.py``) and calls ``api.py`` (plan, build, verify) or, for the commands
the API does not cover (fetch, prepare, keygen, sign), the stage it needs; cli.py
registers them."""
