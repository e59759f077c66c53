"""Native framing and platform knowledge as pure logic: text in, output and prompt out."""

from __future__ import annotations

import pytest

from phonehome_jump.framing import NativeFramer
from phonehome_jump.platforms import GENERIC, for_device_type, ntc_platform


def framer(device_type: str, base: str) -> NativeFramer:
    f = NativeFramer(for_device_type(device_type))
    f.base = base
    f._end = f.platform.prompt_at_end(base)
    return f


def run(f: NativeFramer, command: str | None, *chunks: str) -> tuple[str, str | None]:
    """Feed chunks as they arrive; return (output, prompt) once a prompt is held at the end."""
    f.begin(command)
    out = ""
    for chunk in chunks:
        out += f.feed(f.filter(chunk))
    assert f.candidate, f.held()
    out += f.finish()
    return out, f.prompt


def test_device_types_map_to_families_and_unknown_ones_to_generic():
    assert for_device_type("cisco_ios").name == "cisco_ios"
    assert for_device_type("cisco_ios_ssh").name == "cisco_ios"
    assert for_device_type("huawei").name == "huawei_vrp"
    assert for_device_type("juniper").name == "juniper_junos"
    assert for_device_type("zte_zxros") is GENERIC
    assert ntc_platform("huawei") == "huawei_vrp" and ntc_platform("cisco_ios") == "cisco_ios"


def test_output_starts_after_the_echo_and_stale_prompts_are_dropped():
    f = framer("cisco_ios", "r1")
    out, prompt = run(f, "show clock", "r1#\r\nr1#", "show clock\r\n", "12:00 UTC\r\n", "r1#")
    assert (out, prompt, f.mode) == ("12:00 UTC\n", "r1#", "enable")
    assert f.notice() is None


def test_earlier_output_before_the_echo_is_dropped_and_reported():
    f = framer("cisco_ios", "r1")
    out, _ = run(f, "show clock", "late line of another command\r\nr1#show clock\r\nnow\r\nr1#")
    assert out == "now\n"
    assert "resynchronised" in f.notice()


def test_a_line_that_looks_like_the_prompt_is_output_while_more_follows():
    f = framer("cisco_ios", "r1")
    f.begin("show run")
    out = f.feed(f.filter("show run\r\nbanner\r\nr1#"))
    assert f.candidate                      # held: could be the end ...
    out += f.feed(f.filter("\r\nr1>\r\nend\r\n"))
    assert not f.candidate                  # ... but its newline came: it was output
    out += f.feed(f.filter("r1#"))
    out += f.finish()
    assert out == "banner\nr1#\nr1>\nend\n"


def test_echo_split_across_chunks_and_blank_leading_line_kept():
    f = framer("cisco_ios", "r1")
    out, _ = run(f, "show version", "sho", "w vers", "ion", "\r\n", "\r\nCisco IOS\r\n", "r1#")
    assert out == "\nCisco IOS\n"


@pytest.mark.parametrize("prompt,mode", [("<huawei-r1>", "user-view"), ("[huawei-r1]", "system-view"),
                                         ("[~huawei-r1-GigabitEthernet0/0/1]", "system-view")])
def test_vrp_prompts_keep_their_brackets(prompt, mode):
    f = framer("huawei", "huawei-r1")
    out, got = run(f, "display clock", "display clock\r\n2026-11-30\r\n" + prompt)
    assert (out, got, f.mode) == ("2026-11-30\n", prompt, mode)


def test_junos_context_lines_belong_to_the_prompt():
    f = framer("juniper_junos", "user@r1")
    out, prompt = run(f, "set system host-name r1", "set system host-name r1\r\n\r\n[edit]\r\nuser@r1# ")
    assert (out, prompt, f.mode) == ("", "user@r1#", "config")
    out, _ = run(f, "show | compare", "show | compare\r\n[edit system]\r\n+ host-name r1;\r\n"
                 "\r\n{master:0}[edit]\r\nuser@r1# ")
    assert out == "[edit system]\n+ host-name r1;\n"          # [edit system] is output here
    out, _ = run(f, "show version", "show version\r\nJunos: 18.4\r\n\r\n{master:0}\r\nuser@r1> ")
    assert out == "Junos: 18.4\n" and f.mode == "exec"


def test_pager_is_answered_and_erased():
    f = framer("cisco_ios", "r1")
    f.begin("show log")
    out = f.feed(f.filter("show log\r\na\r\n --More-- "))
    assert f.reply == " " and not f.candidate
    out += f.feed(f.filter("\b" * 10 + " " * 10 + "\b" * 10 + "b\r\nr1#"))
    out += f.finish()
    assert out == "a\nb\n"


def test_no_echo_yet_is_a_notice_not_an_answer():
    f = framer("cisco_ios", "r1")
    f.begin("show clock")
    assert f.feed(f.filter("r1#")) == "" and not f.candidate
    assert "not echoed" in f.notice()


@pytest.mark.parametrize("device_type,text", [
    ("cisco_ios", "        ^\n% Invalid input detected at '^' marker.\n"),
    ("arista_eos", "% Incomplete command\n"),
    ("cisco_nxos", "% Invalid command at '^' marker.\n"),
    ("juniper_junos", "                 ^\nsyntax error, expecting <command>.\n"),
    ("huawei", "Error: Unrecognized command found at '^' position.\n"),
    ("hp_comware", " % Unrecognized command found at '^' position.\n"),
    ("zte_zxros", "% Unknown command.\n"),
])
def test_error_markers(device_type, text):
    p = for_device_type(device_type)
    assert p.error_in(text) == text.strip().splitlines()[-1].strip()
    assert p.error_in("Interface  Status\nGi0/1 up\n") is None


def test_generic_holds_on_an_untested_prompt_shape():
    f = framer("zte_zxros", "zx-r1")
    out, prompt = run(f, "show clock", "show clock\r\n10:00\r\nzx-r1(config)#")
    assert (out, prompt, f.mode) == ("10:00\n", "zx-r1(config)#", "config")
