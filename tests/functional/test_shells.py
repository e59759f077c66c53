"""Login shells other than bash behind the same two jumps: busybox ash (routers, Alpine,
appliances), dash and zsh. busybox ash's own line editor echoes every line it reads, whatever
the terminal says; the session then reads lines through a canonical terminal without echo,
with that terminal's limits, and says so when a command would cross them."""

from __future__ import annotations

import pytest

from phonehome_jump.errors import SessionError
from phonehome_jump.inventory import Inventory
from phonehome_jump.manager import SessionManager

from .waits import until

SHELLS = {"phjash": "-ash", "phjdash": "-dash", "phjzsh": "-zsh"}
SEQ = "".join(f"{i}\n" for i in range(1, 100_001))


@pytest.fixture(scope="module")
def shells_inventory(lab) -> Inventory:
    extra = "".join(lab.shell_host_yaml(user) for user in SHELLS)
    extra += lab.dropbear_host_yaml("lab-openwrt", user="phjash") + lab.sane_host_yaml()
    return Inventory.from_text(lab.inventory.read_text() + extra, str(lab.inventory))


@pytest.mark.parametrize("user", SHELLS)
def test_every_output_is_exactly_the_commands_own(shells_inventory, user):
    with SessionManager(shells_inventory, cap=2_000_000) as m:
        sid = m.open(f"lab-{user}").id
        r = m.command(sid, 'echo "$0"')
        assert (r.exit_status, r.output) == (0, SHELLS[user] + "\n")     # the shell it is
        r = m.command(sid, "cd /tmp && PHJ_X=42; export PHJ_X")
        assert (r.exit_status, r.cwd, r.output) == (0, "/tmp", "")
        assert m.command(sid, 'echo "$PHJ_X $(pwd)"').output == "42 /tmp\n"
        assert m.command(sid, "false").exit_status == 1
        # a tab is not completion, a here-document is text, several lines are one command
        assert m.command(sid, "printf 'a\tb\\n' | od -An -c").output.split() == ["a", "\\t", "b", "\\n"]
        assert m.command(sid, "cat <<'E'\n$HOME `x` \\\nE").output == "$HOME `x` \\\n"
        assert m.command(sid, "echo one\necho two").output == "one\ntwo\n"
        r = m.command(sid, "seq 1 100000", wait=60)
        assert (r.exit_status, r.output == SEQ) == (0, True)
        # a line longer than one read of ash (1,023 bytes), up to the terminal's line
        long = "x" * 4000
        assert m.command(sid, f"echo {long} | wc -c").output.strip() == str(len(long) + 1)
        asked = m.command(sid, "printf 'Name: '; read n; echo \"got $n\"", wait=1)
        assert asked.running and asked.output == "Name: "
        m.send(sid, "bob")
        assert m.read(sid, wait=10).output == "got bob\n"
        assert m.command(sid, "echo after").output == "after\n"      # still in step
        assert m.command(sid, "exit 3").exit_status == 3


def test_ash_gets_a_canonical_terminal_and_its_limits_are_errors(shells_inventory):
    with SessionManager(shells_inventory) as m:
        sid = m.open("lab-phjash").id
        assert m.session(sid).framer.canonical
        modes = set(m.command(sid, "stty -a").output.split())
        assert {"icanon", "-echo", "-iexten", "-onlcr"} <= modes
        # Ctrl-D is the end of a program's input, as on any terminal
        assert m.command(sid, "cat", wait=0.3).running
        m.send(sid, "line")
        m.send(sid, control="ctrl-d")
        assert m.read(sid, wait=10).output == "line\n"
        # a line the terminal would cut, and a key it would edit with: refused, nothing sent
        with pytest.raises(SessionError, match="at most 4094 per line") as err:
            m.command(sid, "echo " + "y" * 5000)
        assert "host 'lab-phjash'" in str(err.value)
        with pytest.raises(SessionError, match="Ctrl-U"):
            m.command(sid, "echo a\x15b")
        with pytest.raises(SessionError, match="more than 1000 bytes"):
            m.send(sid, "z" * 1500)
        assert not m.session(sid).running
        assert m.command(sid, "echo fine").output == "fine\n"
        # a background job detached from the shell is fine; one that ends while the shell
        # waits at its prompt ends the shell (its stdio read takes the signal as end of
        # input), and the session says so and what to do
        assert m.command(sid, "(sleep 0.2 &)").exit_status == 0
        assert m.command(sid, "sleep 0.5; echo alive").output == "alive\n"
        assert m.command(sid, "sleep 0.2 &").exit_status == 0
        info = until(lambda: next((i for i in m.list() if i.id == sid and i.state == "dead"), None),
                     timeout=15, what="the shell to end")
        assert "start such jobs as `(command &)`" in info.dead_reason


@pytest.mark.parametrize("user", ["phjdash", "phjzsh"])
def test_dash_and_zsh_keep_the_quiet_raw_terminal(shells_inventory, user):
    with SessionManager(shells_inventory) as m:
        sid = m.open(f"lab-{user}").id
        assert not m.session(sid).framer.canonical
        assert {"-icanon", "-echo", "-onlcr"} <= set(m.command(sid, "stty -a").output.split())
        long = "x" * 20000                   # no terminal line limit on a raw terminal
        assert m.command(sid, f"echo {long} | wc -c").output.strip() == str(len(long) + 1)


def test_zsh_prompt_settings_do_not_reach_the_output(shells_inventory):
    """zsh marks output without a final newline (prompt_sp), takes `%` in the prompt as an
    escape (a directory named with one), and runs the hooks and options of the user's .zshrc
    (the lab's titles the terminal, as many do): none of it shows."""
    with SessionManager(shells_inventory) as m:
        sid = m.open("lab-phjzsh").id
        assert m.command(sid, "printf 'no newline'").output == "no newline"
        r = m.command(sid, "mkdir -p /tmp/phj-100%d && cd /tmp/phj-100%d")
        assert (r.exit_status, r.cwd, r.output) == (0, "/tmp/phj-100%d", "")
        assert m.command(sid, "echo next").output == "next\n"
        m.command(sid, "cd / && rmdir /tmp/phj-100%d")
        # the .zshrc's chpwd hook, print_exit_value and spelling correction stay silent
        assert m.command(sid, "cd /tmp").output == ""
        assert (m.command(sid, "false").output, m.session(sid).running) == ("", False)
        r = m.command(sid, "sl", wait=5)
        assert (r.exit_status, r.output) == (127, "zsh: command not found: sl\n")


def test_what_prompt_frameworks_add_to_bash_stays_out_of_the_output(shells_inventory):
    """phjsane's profile sets a PS0 and a DEBUG trap that print around every command."""
    with SessionManager(shells_inventory) as m:
        sid = m.open("lab-sane").id
        assert m.command(sid, "echo hi").output == "hi\n"
        r = m.command(sid, "cd /tmp")
        assert (r.exit_status, r.cwd, r.output) == (0, "/tmp", "")
        assert m.command(sid, "echo one\necho two").output == "one\ntwo\n"


def test_an_openwrt_like_login_ash_on_dropbear(shells_inventory):
    """busybox ash behind dropbear, as on OpenWrt: the same canonical terminal, exact output."""
    with SessionManager(shells_inventory, cap=2_000_000) as m:
        sid = m.open("lab-openwrt").id
        assert m.session(sid).framer.canonical
        assert m.command(sid, 'echo "$0"').output == "-ash\n"
        r = m.command(sid, "seq 1 100000", wait=60)
        assert (r.exit_status, r.output == SEQ) == (0, True)
        long = "x" * 3000
        assert m.command(sid, f"echo {long} | wc -c").output == f"{len(long) + 1}\n"
        assert m.command(sid, "cd /tmp; exit 4").exit_status == 4
