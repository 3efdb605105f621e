"""Notes say why something is missing, in words that fit the case at hand."""

from __future__ import annotations

import textwrap

from gradtrace.script import run_script


def test_ops_made_before_the_recorded_step_are_explained(tmp_path):
    """A GAN reuses the generator's output after the discriminator's backward: at that step the
    generator's ops were made before recording began, and the note says so (not only 'threads')."""
    script = tmp_path / "gan_like.py"
    script.write_text(textwrap.dedent("""
        import torch
        from torch import nn
        torch.manual_seed(0)
        g, d = nn.Linear(3, 3), nn.Linear(3, 1)
        fake = g(torch.randn(4, 3))
        d(fake.detach()).sum().backward()   # step 1: the discriminator on the fake batch
        d(fake).sum().backward()            # step 2: the generator, through the discriminator
    """))
    t = run_script(script, step=2)
    blank = [n for n in t.nodes if n.kind == "op" and n.value is None]
    assert blank and all(n.grad is not None for n in blank), "the generator's op shows its gradient, not its value"
    (note,) = [x for x in t.notes if "no forward value" in x]
    assert note.startswith(f"{len(blank)} op(s)") and "before the recorded step began" in note
