"""Untrusted text (a guest's console) made safe for messages, Comments and drain reasons."""

from __future__ import annotations

from slurm_vc import slurm
from slurm_vc.hypervisor import TAIL_BYTES, TAIL_LINE_WIDTH, tail_file
from slurm_vc.text import clip_lines, printable


def test_printable_drops_escape_sequences_and_marks_control_characters():
    assert printable("\x1b[0;32m  OK  \x1b[0m] Started") == "  OK  ] Started"
    assert printable("a\x1b]0;new title\x07b\x1b]2;other\x1b\\c") == "abc"  # OSC, BEL or ST ended
    assert printable("x\x1bcy") == "xy"  # RIS: reset the terminal
    assert printable("\x1b(Bplain\x1b7") == "plain"  # character set, save cursor
    assert printable("nul\x00 bell\x07 del\x7f c1\x9b31m") == "nul? bell? del? c1?31m"
    assert printable("one\r\ntwo\rthree\tfour\n") == "one\ntwo\nthree\tfour\n"


def test_clip_lines():
    assert clip_lines("short\n" + "x" * 20, 10) == "short\n" + "x" * 7 + "..."


def test_tail_file_reads_only_the_end_and_bounds_each_line(tmp_path):
    log = tmp_path / "console.log"
    body = "".join(f"line {i}\r\n" for i in range(100_000))  # ~1.2 MB, serial-console line ends
    log.write_bytes(body.encode() + b"\x1b[31mpanic\x1b[0m: " + b"z" * (3 * TAIL_BYTES))
    tail = tail_file(log, 3)
    # The endless last line is longer than the window: only its clipped end remains.
    assert tail == "z" * (TAIL_LINE_WIDTH - 3) + "..."
    log.write_bytes(body.encode() + b"\x1b[31mpanic\x1b[0m: the end\n")
    assert tail_file(log, 3) == "line 99998\nline 99999\npanic: the end\n"
    assert tail_file(log, 0) == ""
    assert tail_file(tmp_path / "missing.log") == ""


def test_comment_and_drain_reason_reach_scontrol_printable(monkeypatch):
    calls = []
    monkeypatch.setattr(slurm, "_run", lambda argv, timeout=None: calls.append(argv) or "")
    slurm.set_job_comment(7, "slurm-vc[0]: node n1: guest stopped; console:\n\x1b]0;owned\x07boot\x1b[2J ok")
    slurm.drain_node("n1", "slurm-vc job 7: qemu said \x1b[1mno\x1b[0m\n\x00")
    assert calls == [
        ["scontrol", "update", "JobId=7", "Comment=slurm-vc[0]: node n1: guest stopped; console: boot ok"],
        ["scontrol", "update", "NodeName=n1", "State=DRAIN", "Reason=slurm-vc job 7: qemu said no ?"],
    ]
