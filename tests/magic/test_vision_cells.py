"""Images and windows from a cell (issue 13, router side): ``--vars fig`` goes as an image
part to a provider whose model has ``capabilities: [vision]``, and as a text description
when no provider in the cascade has one; pinned to one without vision, one clear block.
The window comes from the router (providers.yaml, else the server's own report). The
loopback server records each request body: the tests read what was really sent."""

from __future__ import annotations

import base64
import re

import matplotlib
import pytest
from IPython.core.interactiveshell import InteractiveShell

from tests.magic.conftest import WriteProviders, local, sent
from tests.magic.conftest import run_shown as run
from tests.support.faultserver import FaultServer

matplotlib.use("Agg")
EYES = [{"name": "eyes", "capabilities": ["vision"]}]


def figure(shell: InteractiveShell) -> None:
    run(shell, "import matplotlib.pyplot as plt\nfig, ax = plt.subplots(figsize=(2, 1), "
               "dpi=50)\nax.plot([1, 3, 2])\nax.set_title('sales')\nplt.close(fig)")


def test_a_cascade_without_vision_sends_the_figure_as_a_description(
        shell: InteractiveShell, fault: FaultServer, write_providers: WriteProviders) -> None:
    import timmy_magic

    write_providers([local("text", fault.base_url("ok", text="a line"),
                           models=[{"name": "gemma"}])])
    run(shell, "%load_ext timmy_magic")
    figure(shell)
    fault.reset()
    res, shown = run(shell, "%%llm --vars fig\nWhat does the figure show?")
    assert res.error_in_exec is None, shown
    user = sent(fault)[-1]["messages"][-1]["content"]
    assert isinstance(user, str) and "this model cannot see it" in user
    assert "sent as a text description" in shown
    assert timmy_magic.last().provider == "text"


def test_a_vision_provider_receives_the_image_part_and_the_others_are_skipped(
        shell: InteractiveShell, fault: FaultServer, write_providers: WriteProviders) -> None:
    import timmy_magic

    write_providers([local("text", fault.base_url("ok", text="no"), 1,
                           models=[{"name": "gemma"}]),
                     local("eyes", fault.base_url("ok", text="a rising line"), 2, models=EYES)])
    run(shell, "%load_ext timmy_magic")
    figure(shell)
    fault.reset()
    res, shown = run(shell, "%%llm --vars fig --trace\nWhat does the figure show?")
    assert res.error_in_exec is None, shown
    bodies = sent(fault)
    assert len(bodies) == 1 and bodies[0]["model"] == "eyes"  # "text" was never asked
    content = bodies[0]["messages"][-1]["content"]
    assert [p["type"] for p in content] == ["text", "image_url"]
    assert "Image `fig`" in content[0]["text"] and "cannot see it" not in content[0]["text"]
    url = content[1]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]).startswith(b"\x89PNG")
    last = timmy_magic.last()
    assert last.provider == "eyes" and "sent as a text description" not in shown
    assert [str(s) for s in last.trace.skipped] == \
        ["text skipped (no vision: model gemma lacks capabilities: [vision])"]
    assert "no vision" in shown  # --trace shows the route


def test_pinned_to_a_provider_without_vision_is_one_clear_block(
        shell: InteractiveShell, fault: FaultServer, write_providers: WriteProviders) -> None:
    write_providers([local("text", fault.base_url("ok"), 1, models=[{"name": "gemma"}]),
                     local("eyes", fault.base_url("ok"), 2, models=EYES)])
    run(shell, "%load_ext timmy_magic")
    figure(shell)
    fault.reset()
    res, shown = run(shell, "%%llm -p text --vars fig\nWhat does the figure show?")
    assert res.error_in_exec is None and "Traceback" not in shown
    assert "pinned provider 'text' cannot see images: model gemma lacks capabilities: " \
        "[vision]" in shown
    assert sent(fault) == []


@pytest.mark.parametrize("pinned", [True, False])
def test_the_window_a_server_reported_cuts_the_context(
        shell: InteractiveShell, fault: FaultServer, write_providers: WriteProviders,
        pinned: bool) -> None:

    write_providers([local("small", fault.base_url("ok", text="ok", n_ctx=2048))])
    run(shell, "%load_ext timmy_magic")
    from timmy_magic.notebook.extension import extension

    ext = extension(shell)
    ext.router.check_health()
    assert ext.router.context_window("small") == 2048
    for i in range(8):
        shell.user_ns[f"big{i}"] = f"word{i} " * 5_000
    names = ",".join(f"big{i}" for i in range(8))
    fault.reset()
    pin = "-p small " if pinned else ""
    res, shown = run(shell, f"%%llm {pin}--vars {names} --max-tokens 256\nsummarise them")
    assert res.error_in_exec is None, shown
    user = sent(fault)[-1]["messages"][-1]["content"]
    assert len(user) < 4 * (2048 - 256) and user.rstrip().endswith("summarise them")
    assert re.search(r"cut: \d vars?", shown), shown
    assert ("cut to fit small's context window (2,048 tokens" in shown) == pinned
