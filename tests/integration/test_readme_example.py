"""The README's plain-Python example, run as written against the shipped default config:
the router launches the embedded llama-server + Gemma itself and streams a real answer."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.servers import free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_readme_python_example_streams_from_a_real_local_model(tmp_path):
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"## Use from plain Python\n\n```python\n(.*?)```", readme, re.S).group(1)
    env = {k: v for k, v in os.environ.items() if k != "TIMMY_PROVIDERS"}
    # a free port for the embedded server, and nothing else of this machine's config
    env.update(TIMMY_LOCAL_PORT=str(free_port()), XDG_CONFIG_HOME=str(tmp_path / "cfg"),
               LLAMA_SERVER_URL=f"http://127.0.0.1:{free_port()}",
               OLLAMA_HOST=f"http://127.0.0.1:{free_port()}")
    env.pop("OPENAI_API_KEY", None)
    env.pop("ANTHROPIC_API_KEY", None)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "Trying(provider='local-gemma'" in out
    assert "Status(provider='local-gemma', message='starting llama" in out
    assert "Delta(text=" in out and "Done(result=Result(" in out
    assert "local-gemma · gemma-3-270m" in out  # the footer of the pinned answer
    assert "local-gemma#1 answered" in out       # the route trace
