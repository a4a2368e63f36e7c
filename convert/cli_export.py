"""`edgecls export`: a finished run exported for other hardware; `edgecls export imx500 RUN_DIR` for the Raspberry Pi
AI Camera. A thin layer over edgecls.convert.imx500_run; importing it is cheap (TensorFlow loads when it runs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgecls.cli.common import error, examples, project_errors, verbose
from edgecls.errors import EXIT_VERDICT

export_app = typer.Typer(
    help="Export a finished convert run for other hardware: imx500 (the Raspberry Pi AI Camera).",
    no_args_is_help=True,
    add_completion=False,
    epilog=examples("edgecls export imx500 run", "edgecls export imx500 run --data photos/ --max-drop 2"),
)


@export_app.command("imx500")
def export_imx500(
    run_dir: Annotated[
        Path,
        typer.Argument(
            help="The --out folder of an edgecls convert (report.json, model.keras).",
            exists=True,
            file_okay=False,
            show_default=False,
        ),
    ],
    data: Annotated[
        Path | None,
        typer.Option(
            help="The dataset folder the run was trained on, when it is no longer "
            "where the run says (its split is made again with the run's seed).",
            show_default=False,
        ),
    ] = None,
    max_drop: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="Largest allowed top-1 drop of the IMX500 model, in points (default: the run's).",
            show_default=False,
        ),
    ] = None,
    min_agreement: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Smallest top-1 agreement with the float model (default: the run's).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Quantise a run's model for the Raspberry Pi AI Camera's IMX500 sensor and convert it (RUN_DIR/imx500/:
    packerOut.zip, labels.txt, memory_report.json), with its own parity gate in the run's report.

    The IMX500 toolchain gets an environment of its own, created on first use (a few minutes, about 2.3 GB; see
    edgecls doctor); it needs Java 17. On the Pi, imx500-package -i packerOut.zip -o DIR makes network.rpk.
    Exit code 3: the IMX500 model failed the parity gate or does not fit the sensor's memory (it is still written).
    """
    from .progress import RichObserver

    observer = RichObserver()
    with _native_log(), project_errors():
        from .api import import_tensorflow
        from .imx500 import summary_line, verdict
        from .imx500_run import export_run

        import_tensorflow("export imx500", verbose=verbose())  # its load-time chatter held back, as convert's

        section = export_run(run_dir, data=data, max_drop=max_drop, min_agreement=min_agreement, progress=observer.step)
    observer.console.print(summary_line(section), soft_wrap=True)
    problem = verdict(section)
    if problem:
        error(problem)
        raise typer.Exit(code=EXIT_VERDICT)


def _native_log():  # type: ignore[no-untyped-def]
    """TensorFlow's native log lines held back at the default verbosity, as convert does (-v shows them)."""
    import contextlib

    from .tflog import held_back

    return contextlib.nullcontext() if verbose() else held_back()
