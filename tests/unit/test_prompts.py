"""The shared prompt definition: which output asks for input, and which for a secret."""

from __future__ import annotations

import pytest

from phonehome_jump.prompts import (INPUT_PROMPT, SECRET_PROMPT, asks_for_secret, awaiting_input,
                                    line_is_secret, runs_password_program)


@pytest.mark.parametrize("tail", [
    "[sudo] password for phjsudo: ",
    "Password: ",
    "Password:",
    "bob@10.0.0.1's password: ",
    "Enter passphrase for key '/home/bob/.ssh/id_ed25519': ",
    "Enter PEM pass phrase:",
    "Verifying - Enter PEM pass phrase:",
    "Enter pass phrase for /tmp/key.pem:",
    "New password: ",
    "Retype new password: ",
    "Enter PIN for 'PIV Card Holder pin': ",
    "Verification code: ",
    "Vault token: ",
    "Password for 'https://git.example.com': ",
    "output before\nEnter secret: ",
])
def test_password_like_prompts_ask_for_a_secret(tail):
    assert asks_for_secret(tail) and line_is_secret(tail) and awaiting_input(tail)
    assert SECRET_PROMPT.search(tail) and INPUT_PROMPT.search(tail)


@pytest.mark.parametrize("tail", [
    "Continue? [y/n] ",
    "Do you want to continue? [Y/n] ",
    "Are you sure you want to continue connecting (yes/no/[fingerprint])? ",
    "Overwrite? (y/n) ",
])
def test_questions_ask_for_input_but_not_for_a_secret(tail):
    assert awaiting_input(tail) and not asks_for_secret(tail) and not line_is_secret(tail)
    assert not asks_for_secret(tail, "sudo apt-get install nginx")


@pytest.mark.parametrize("tail", [
    "password set\n$ ",
    "[sudo] password for phjsudo: \n",          # answered: sudo printed its newline
    "Password: \nok\n",
    "passwords match\n",
    "",
    "Name? ",                                    # a question, but not one we know
    "Say the magic word: \n",
])
def test_answered_or_ordinary_output_asks_for_nothing(tail):
    assert not asks_for_secret(tail) and not awaiting_input(tail)


def test_a_custom_prompt_counts_after_a_program_that_reads_passwords():
    tail = "Say the magic word: "                # sudo -p 'Say the magic word: '
    assert not asks_for_secret(tail)             # the words alone say nothing
    for command in ("sudo -p 'Say the magic word: ' id", "cd /x && /usr/bin/sudo -k true",
                    "openssl rsa -in k.pem -out /tmp/x", "mysql -u root -p"):
        assert runs_password_program(command)
        assert asks_for_secret(tail, command) and line_is_secret(tail, command)
        assert awaiting_input(tail, command)
    assert not asks_for_secret(tail, "echo -n 'Say the magic word: '")
    assert not asks_for_secret("Say the magic word: \n", "sudo true")      # answered
    assert not asks_for_secret("total 0\n", "sudo ls /root")
    assert not asks_for_secret("\nsudo: ", "sudo -k; sudo id")        # "sudo: a password is…" cut
    assert not runs_password_program("pseudo-sudoku") and not runs_password_program(None)


def test_a_y_n_after_sudo_is_not_secret():
    # sudo prompted, was answered (newline), then apt asks [Y/n]: that answer is not secret
    tail = "[sudo] password for bob: \nReading package lists...\nDo you want to continue? [Y/n] "
    assert awaiting_input(tail, "sudo apt-get install x")
    assert not line_is_secret(tail, "sudo apt-get install x")


def test_the_quick_look_at_the_last_character_never_changes_an_answer():
    """Output whose last non-blank character cannot end a prompt skips the patterns; over
    prompts, their near misses and random text, no pattern would have matched it."""
    import random

    from phonehome_jump import prompts

    pieces = ["password", "Password", "[sudo] pw for x", "pass phrase", "verification\ncode",
              "[y/n]", "(yes/no/[fingerprint])?", "(y/n)", "token", "PIN", "Name", "sudo",
              ":", "?", ">", "]", ")", " ", "\t", "\n", "x", "1", "\r", "é", "》"]
    rng = random.Random(13)
    tails = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 8))) for _ in range(20_000)]
    everything = (prompts.SECRET_PROMPT, prompts.QUESTION_PROMPT, prompts.INPUT_PROMPT,
                  prompts._PROMPT_SHAPE)
    skipped = 0
    for tail in tails:
        if not prompts._may_ask(tail):
            skipped += 1
            assert not any(p.search(tail) for p in everything), repr(tail)
    assert 5_000 < skipped < 20_000          # both kinds were tried
