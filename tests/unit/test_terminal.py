"""The interactive shell's line watch: which line Enter ends, read off an emulated screen."""

from __future__ import annotations

from phonehome_jump.cli_terminal import LineWatch


def typed(w: LineWatch, keys: str, echo: str) -> None:
    """Keys as the user types them, then the remote's echo of them."""
    for ch in keys:
        w.key(ord(ch))
    w.output(echo.encode())


def test_a_typed_command_line():
    w = LineWatch(80, 24)
    w.output(b"motd\r\nuser@h:~$ ")
    typed(w, "ls -l", "ls -l")
    assert w.entered() == ("command", "ls -l")


def test_history_and_completion_are_read_off_the_screen():
    w = LineWatch(80, 24)
    w.output(b"user@h:~$ ")
    typed(w, "\x1b[A", "systemctl restart nginx")       # Up: the remote recalls a line
    assert w.entered() == ("command", "systemctl restart nginx")
    w.output(b"\r\nuser@h:~$ ")
    typed(w, "cat /etc/hostn\t", "cat /etc/hostname ")   # Tab: the remote completes it
    assert w.entered() == ("command", "cat /etc/hostname")
    w.output(b"\r\nuser@h:~$ ")
    typed(w, "rm x\x08\x08\x08\x08echo ok", "rm x\x08\x1b[K\x08\x1b[K\x08\x1b[K\x08\x1b[Kecho ok")
    assert w.entered() == ("command", "echo ok")


def test_a_line_longer_than_the_screen_at_its_bottom():
    w = LineWatch(20, 3)
    w.output(b"a\r\nb\r\n$ ")                          # the prompt on the last row
    line = "echo " + "x" * 40
    typed(w, line, line)                              # wraps, and the screen scrolls twice
    assert w.entered() == ("command", line)


def test_secret_prompts_known_and_other():
    for prompt in (b"[sudo] password for phjsudo: ", b"Enter PEM pass phrase:", b"Password: "):
        w = LineWatch(80, 24)
        w.output(b"$ sudo -k; sudo id\r\n" + prompt)
        typed(w, "hunter2", "")                       # not echoed by the remote
        assert w.entered() == ("secret", "")


def test_typed_ahead_and_program_input_are_not_command_lines():
    w = LineWatch(80, 24)
    w.output(b"$ sleep 1; sudo id\r\n")
    typed(w, "hunter2", "hunter2")                    # echoed before sudo turned echo off
    assert w.entered() == ("input", "hunter2")


def test_full_screen_programs_are_not_watched():
    w = LineWatch(80, 24)
    w.output(b"$ vi x\r\n\x1b[?1049h\x1b[H\x1b[2J~\r\n~")
    typed(w, ":wq", ":wq")
    assert w.entered() is None
    w.output(b"\x1b[?1049l$ ")
    typed(w, "pwd", "pwd")
    assert w.entered() == ("command", "pwd")


def test_ctrl_c_abandons_the_line():
    w = LineWatch(80, 24)
    w.output(b"$ ")
    typed(w, "rm -rf /x", "rm -rf /x")
    w.key(3)
    w.output(b"^C\r\n$ ")
    typed(w, "id", "id")
    assert w.entered() == ("command", "id")


def test_an_unechoed_line_after_any_prompt_is_secret():
    w = LineWatch(80, 24)
    w.output(b"$ sudo -k -p 'Code for phjsudo> ' id\r\nCode for phjsudo> ")
    typed(w, "hunter2", "")                           # echo off: it is a password
    assert w.entered() == ("secret", "")


def test_a_yes_no_question_gets_an_answer():
    w = LineWatch(80, 24)
    w.output(b"Do you want to continue? [Y/n] ")
    typed(w, "Y", "Y")
    assert w.entered() == ("answer", "Y")
