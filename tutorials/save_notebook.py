"""Execute tutorial notebooks in full mode and save them with their outputs, free of local paths.

    python tutorials/save_notebook.py tutorials/latent_mala.ipynb [...]   # execute and save
    python tutorials/save_notebook.py --scrub-only tutorials/*.ipynb       # only clean outputs

Full mode means ``PYRO_MIXFLOWS_QUICK`` unset (the test suite runs the notebooks in quick mode and
never saves them). The saved notebook records ``metadata["pyro_mixflows"]["mode"] = "full"``,
which ``tests/test_tutorials.py`` checks, and its outputs carry no absolute path of this machine:
tqdm's "IProgress not found" warning is dropped, and any other path into site-packages or into the
repository is shortened (``<site-packages>/...``, a path relative to the repository).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
_SITE = re.compile(r"(?:/[^\s'\"():]+)+/(?:site|dist)-packages/")
_NOISE = ("TqdmWarning: IProgress not found", "from .autonotebook import tqdm as notebook_tqdm")


def _scrub_text(text: str) -> str:
    text = _SITE.sub("<site-packages>/", text)
    return text.replace(str(ROOT) + os.sep, "").replace(str(ROOT), ".")


def scrub(nb) -> None:
    """Drop tqdm's notebook warning and shorten local paths in every output, in place."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                lines = [
                    line
                    for line in out["text"].splitlines(keepends=True)
                    if not any(noise in line for noise in _NOISE)
                ]
                if not "".join(lines).strip():
                    continue
                out["text"] = _scrub_text("".join(lines))
            for key in ("data",):
                for mime, value in out.get(key, {}).items():
                    if mime.startswith("text/"):
                        joined = value if isinstance(value, str) else "".join(value)
                        out[key][mime] = _scrub_text(joined)
            if "traceback" in out:
                out["traceback"] = [_scrub_text(line) for line in out["traceback"]]
            kept.append(out)
        cell["outputs"] = kept


def main(argv: list[str] | None = None) -> int:
    import nbclient
    import nbformat

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=pathlib.Path)
    parser.add_argument("--scrub-only", action="store_true", help="clean outputs, run nothing")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell (3600)")
    args = parser.parse_args(argv)
    os.environ.pop("PYRO_MIXFLOWS_QUICK", None)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    for path in args.notebooks:
        nb = nbformat.read(path, as_version=4)
        if not args.scrub_only:
            client = nbclient.NotebookClient(
                nb,
                timeout=args.timeout,
                kernel_name="python3",
                resources={"metadata": {"path": str(path.resolve().parent)}},
            )
            client.execute()
            nb.metadata["pyro_mixflows"] = {"mode": "full"}
        scrub(nb)
        nbformat.write(nb, path)
        print(f"saved {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
