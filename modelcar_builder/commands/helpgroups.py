"""`--help` in sections (source, selection, image and base, registry and auth, engine,
tuning, outputs) instead of one flat list: `build` alone has over 30 options. Uses
click's own ``formatter.section``; a parameter no section names lands under "Other"."""

from __future__ import annotations

import click

SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Source", ("hf_token_file", "source_url", "workspace")),
    (
        "Selection and layers",
        (
            "include",
            "exclude",
            "all_files",
            "allow_incomplete",
            "layer_threshold",
            "max_layers",
            "max_layer_size",
            "allow_large_layer",
        ),
    ),
    (
        "Image and base",
        (
            "image",
            "parts",
            "wait",
            "base_image",
            "platform",
            "compression",
            "load",
            "labels",
            "modelpack",
        ),
    ),
    (
        "Registry and auth",
        ("authfile", "registry_token_file", "tls_verify", "ca_file", "mount_from"),
    ),
    ("Engine", ("engine", "stream", "part", "jobs", "upload", "chunk_size")),
    (
        "Download tuning",
        ("fetch_jobs", "connections", "attempts", "read_timeout", "progress_interval"),
    ),
    ("Outputs", ("results_dir", "report_file", "as_json", "deep", "no_preflight")),
    ("Signing", ("sign_key", "sign_key_password_file", "key_path")),
)


class GroupedCommand(click.Command):
    """A command whose options are listed by section, each option in the order given."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows: dict[str, tuple[str, str]] = {}
        for param in self.get_params(ctx):
            if not isinstance(param, click.Option):  # SOURCE and IMAGE are in the usage line
                continue
            record = param.get_help_record(ctx)
            if record is not None and param.name is not None:
                rows[param.name] = record
        placed: set[str] = set()
        for title, names in SECTIONS:
            section = [rows[name] for name in names if name in rows]
            placed.update(name for name in names if name in rows)
            if section:
                with formatter.section(title):
                    formatter.write_dl(section)
        rest = [record for name, record in rows.items() if name not in placed]
        if rest:  # click's own --help at least
            with formatter.section("Other"):
                formatter.write_dl(rest)
