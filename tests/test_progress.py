"""Progress on stderr: tqdm bars with rate and ETA on a terminal only; silent under --quiet or a pipe."""

import io
import time

from click.testing import CliRunner

from onnxprune.cli import main
from onnxprune.progress import Console, StderrConsole
from conftest import SAMPLES


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_bars_show_rate_and_eta_on_a_terminal_only():
    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        console = StderrConsole(stream)
        for done in (10, 20, 30):
            console.progress("measuring activations", done, 30)
            time.sleep(0.12)  # tqdm redraws at most every 0.1 s
        console.log("done")
    shown = tty.getvalue()
    assert "\r" in shown and "measuring activations" in shown and "20/30" in shown
    assert "sample/s" in shown and "<00:" in shown  # rate and ETA
    assert shown.endswith("done\n")  # the bar is cleared when finished, messages stay
    assert pipe.getvalue() == "done\n"


def test_a_message_during_a_bar_keeps_both():
    tty = Tty()
    console = StderrConsole(tty)
    console.progress("evaluating candidates", 1, 4)
    console.log("warning: something")
    console.progress("evaluating candidates", 4, 4)
    assert "warning: something\n" in tty.getvalue() and "candidate" in tty.getvalue()


def test_quiet_and_piped_runs_print_no_bar(tmp_path):
    assert Console().progress("x", 1, 2) is None
    args = ["sweep", str(SAMPLES / "digits_mlp_gemm.onnx"), "--data", str(SAMPLES / "digits_val.npz"),
            "--grid", "0,0.3"]
    piped = CliRunner().invoke(main, args)  # CliRunner's stderr is not a terminal
    assert piped.exit_code == 0 and "\r" not in piped.stderr and "evaluating 2 candidates" in piped.stderr
    quiet = CliRunner().invoke(main, [*args, "--quiet"])
    assert quiet.exit_code == 0 and quiet.stderr == ""
