"""Progress for people, in a terminal and in a notebook (rich renders to both): a bar while images decode, a line
per epoch, a line per step. The pipeline reports events through these observers and never prints itself."""

from __future__ import annotations

from typing import Any


def duration(seconds: float) -> str:
    """4 s, 2 min 05 s, 1 h 03 min."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class RichObserver:
    """Progress for people: a bar while images decode, a line per epoch, a line per step."""

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console

        self.console = console or Console(stderr=True)  # in Jupyter, rich draws into the cell's output
        self._progress: Any = None
        self._task: Any = None

    def step(self, message: str) -> None:
        self._close_bar()
        self.console.print(f"[bold cyan]>[/] {message}")

    def decoding(self, done: int, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        if self._progress is None:
            rate = TextColumn("{task.fields[rate]}")
            self._progress = Progress(
                "decoding images",
                BarColumn(),
                MofNCompleteColumn(),
                rate,
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task("decode", total=total, rate="")
        speed = self._progress.tasks[0].speed
        self._progress.update(self._task, completed=done, total=total, rate=f"{speed:,.0f} images/s" if speed else "")
        if done >= total:
            self._close_bar()

    def stage(self, name: str, epochs: int) -> None:
        self._close_bar()
        if name == "backbone features":
            self.console.print(
                "[bold cyan]>[/] running the frozen backbone once over the training and validation "
                "images (no augmentation: the head then trains on its features)"
            )
            return
        if name == "int8-tune":
            self.console.print(f"[bold cyan]>[/] int8 tuning, {epochs} epochs (KL divergence to the float model)")
            return
        self.console.print(f"[bold cyan]>[/] training ({name}), up to {epochs} epochs, early stopping on val loss")

    def epoch(self, stage: str, epoch: int, epochs: int, logs: dict[str, float]) -> None:
        if "kl" in logs:
            self.console.print(f"  {stage} {epoch:3d}/{epochs}  KL {logs['kl']:.5f}")
            return
        timing = ""
        if "epoch_s" in logs:
            timing = f"  {logs['epoch_s']:.1f} s" + (f", left <= {duration(logs['eta_s'])}" if epoch < epochs else "")
        self.console.print(
            f"  {stage} {epoch:3d}/{epochs}  loss {logs.get('loss', float('nan')):.4f}  "
            f"acc {logs.get('accuracy', float('nan')):.3f}  val_loss {logs.get('val_loss', float('nan')):.4f}  "
            f"val_acc {logs.get('val_accuracy', float('nan')):.3f}{timing}",
            soft_wrap=True,
        )

    def _close_bar(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class TuneObserver(RichObserver):
    """Tuning progress: one line as a trial starts and one as it ends, with the best feasible trial so far."""

    def epoch(self, stage: str, epoch: int, epochs: int, logs: dict[str, float]) -> None:
        pass

    def trial_done(self, record: Any, best: Any, done: int, total: int) -> None:
        if record.state == "complete":
            verdict = "[green]feasible[/]" if record.feasible else "[yellow]over budget[/]"
            line = (
                f"int8 val top-1 {100 * record.accuracy:.1f}%, {record.latency_ms:.2f} ms, "
                f"{record.size_kb:.0f} KB, {verdict}"
            )
        else:
            line = f"[yellow]{record.state}[/]"
        best_line = f"; best so far: trial {best.number} ({100 * best.accuracy:.1f}%)" if best else ""
        self.console.print(f"[bold]trial {record.number}[/] ({done}/{total} done): {line}{best_line}", soft_wrap=True)
