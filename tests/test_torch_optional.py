"""torch is optional: ``import mpo`` works without it; ``import mpo.torch`` says how to install it."""

import subprocess
import sys
import textwrap

# A meta-path finder that refuses torch (and transformers, which would import it), run in a fresh
# interpreter so the test's own process keeps its torch.
HIDE_TORCH = textwrap.dedent(
    """
    import sys
    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "transformers"):
                raise ImportError(f"No module named {name!r} (hidden by the test)")
            return None
    sys.meta_path.insert(0, _NoTorch())
    """
)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", HIDE_TORCH + textwrap.dedent(code)], capture_output=True, text=True)


def test_mpo_imports_and_works_without_torch():
    done = _run(
        """
        import numpy as np, mpo
        m = mpo.decompose(np.eye(16), n=2)
        assert np.allclose(m.to_dense(), np.eye(16))
        assert "torch" not in sys.modules
        print("ok")
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_mpo_torch_names_the_install_without_torch():
    done = _run(
        """
        try:
            import mpo.torch
        except ImportError as exc:
            print(exc)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "pip install torch==2.13.0" in done.stdout
