"""A folder of a git repository (GitLab, GitHub or any git URL, file:// included) at a ref.

The repository is fetched once into a cache (``<home>/git``) and updated on later runs; the change signal is the blob
SHA from ``git ls-tree``, so unchanged files are known without reading them. A token (GitLab/GitHub over HTTPS) is
passed through git's environment configuration, never on the command line or in URLs.
"""

from __future__ import annotations

import base64
import hashlib
import os
import posixpath
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from docingest.core.sources.local import OUTSIDE_REASON, matches
from docingest.core.sources.names import is_hidden, local_name
from docingest.datamodel import SourceDocument
from docingest.exceptions import ConfigurationError, SourceError
from docingest.options import SourceOptions

# What git prints when the server wants (other) credentials and prompting is off.
_AUTH_SIGNS = ("Authentication failed", "could not read Username", "could not read Password", " 401", " 403")


def is_git_url(source: str) -> bool:
    return source.startswith(("git+", "git@", "ssh://")) or source.rstrip("/").endswith(".git")


class GitSource:
    """Files under ``path`` of ``url`` at ``ref``; the scope is ``git+<url>@<ref>:<path>``."""

    def __init__(self, url: str, ref: str = "HEAD", path: str = "", options: SourceOptions | None = None, *,
                 token: str | None = None, cache_dir: Path | None = None) -> None:
        self.options = options or SourceOptions()
        self.url = url.removeprefix("git+")
        self.ref = ref or "HEAD"
        self.path = path.strip("/")
        self.uri = f"git+{self.url}@{self.ref}:{self.path}"
        self._token = token
        root = cache_dir or Path(".docingest") / "git"
        self.repo = root / hashlib.sha256(self.url.encode()).hexdigest()[:16]
        self._fetch()
        self.commit = self._resolve_ref()
        if self.path and self._git("cat-file", "-t", f"{self.commit}:{self.path}", check=False).returncode != 0:
            raise ConfigurationError(f"path {self.path!r} not found in {self.url} at {self.ref}")

    def _env(self) -> dict[str, str]:
        env = dict(os.environ, GIT_TERMINAL_PROMPT="0")
        if self._token:
            basic = base64.b64encode(f"oauth2:{self._token}".encode()).decode()
            env.update(GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="http.extraHeader",
                       GIT_CONFIG_VALUE_0=f"Authorization: Basic {basic}")
        return env

    def _git(self, *args: str, check: bool = True, text: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(["git", "--git-dir", str(self.repo), *args], capture_output=True, text=text,
                              env=self._env(), timeout=600)
        if check and proc.returncode != 0:
            err = proc.stderr if text else proc.stderr.decode(errors="replace")
            raise SourceError(f"git {args[0]} failed: {err.strip().splitlines()[-1:] or proc.returncode}")
        return proc

    def _fetch(self) -> None:
        if not (self.repo / "HEAD").exists():
            self.repo.parent.mkdir(parents=True, exist_ok=True)
            proc = subprocess.run(["git", "init", "--bare", "-q", str(self.repo)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise SourceError(f"cannot create git cache {self.repo}: {proc.stderr.strip()}")
        proc = self._git("fetch", "--quiet", "--prune", "--tags", "--force", self.url,
                         "+refs/heads/*:refs/remotes/origin/*", "+HEAD:refs/remotes/origin/HEAD", check=False)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
            if any(sign in proc.stderr for sign in _AUTH_SIGNS):
                hint = ("the token was refused: check DOCINGEST_GIT_TOKEN or the block's token" if self._token
                        else "the repository needs a token: set DOCINGEST_GIT_TOKEN or the block's token")
                raise ConfigurationError(f"git: authentication failed for {self.url}: {hint}")
            raise ConfigurationError(f"git: cannot fetch {self.url}: {last}")

    def _resolve_ref(self) -> str:
        for candidate in (f"refs/remotes/origin/{self.ref}", f"refs/tags/{self.ref}", self.ref):
            proc = self._git("rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}", check=False)
            if proc.returncode == 0:
                return proc.stdout.strip()
        raise ConfigurationError(f"git: unknown ref {self.ref!r} in {self.url}")

    def remote_commit(self) -> str:
        """What ``ref`` names on the remote now (a commit, or an annotated tag's object), asked with one
        ``git ls-remote`` (nothing is fetched): the cheap change check of a live watch. A ref that is a commit id
        never moves. Raises SourceError when the remote cannot be asked or no longer has the ref."""
        if len(self.ref) == 40 and all(c in "0123456789abcdef" for c in self.ref.lower()):
            return self.ref.lower()
        proc = subprocess.run(["git", "ls-remote", "--", self.url, self.ref], capture_output=True, text=True,
                              env=self._env(), timeout=120)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
            raise SourceError(f"git ls-remote {self.url} failed: {last}")
        refs: dict[str, str] = {}
        for line in proc.stdout.splitlines():
            sha, _, name = line.partition("\t")
            refs[name] = sha
        # A branch over a tag of the same name (as _resolve_ref); an annotated tag by the commit it points to.
        for name in (self.ref, f"refs/heads/{self.ref}", f"refs/tags/{self.ref}^{{}}", f"refs/tags/{self.ref}"):
            if name in refs:
                return refs[name]
        raise SourceError(f"git: ref {self.ref!r} is gone from {self.url}")

    def iter_documents(self) -> Iterator[SourceDocument]:
        args = ["ls-tree", "-r", "-z", "--long", self.commit]
        if self.path:
            args += ["--", self.path]
        out = self._git(*args).stdout
        prefix = f"{self.path}/" if self.path else ""
        entries = sorted((entry.split("\t", 1) for entry in filter(None, out.split("\0"))), key=lambda e: e[1])
        tree = {name for _meta, name in entries}
        for meta, name in entries:
            mode, kind, sha, size = meta.split()
            if not name.startswith(prefix):
                continue
            rel = name[len(prefix):]
            if is_hidden(rel) or not matches(rel, self.options.include) or matches(rel, self.options.exclude):
                continue
            doc = SourceDocument(source_uri=self.uri, path=rel, uri=f"{self.uri.rstrip('/')}/{rel}",
                                 size=int(size) if size.isdigit() else 0, content_hash=f"git-blob:{sha}")
            if kind == "commit":
                doc.skip_reason = "a git submodule: not followed"
            elif kind != "blob":
                continue
            elif mode == "120000":
                # A symlink is read from the repository, never from this machine. One that stays inside the source
                # is its target, which is listed on its own; any other is skipped.
                doc.skip_reason = self._link_skip_reason(name, sha, prefix, tree)
                if doc.skip_reason is None:
                    continue
            yield doc

    def _link_skip_reason(self, name: str, sha: str, prefix: str, tree: set[str]) -> str | None:
        """Why the symlink blob ``sha`` at ``name`` is skipped; None when it leads to a file or folder of this source
        (listed on its own: one document, its real path)."""
        target = self._git("cat-file", "blob", sha, text=False).stdout.decode("utf-8", "surrogateescape")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
        inside = not target.startswith("/") and (resolved.startswith(prefix) if prefix else not (
            resolved == ".." or resolved.startswith("../")))
        if not inside:
            return OUTSIDE_REASON
        if resolved in tree or any(n.startswith(f"{resolved}/") for n in tree):
            return None
        return "dangling symlink (its target does not exist)"

    @contextmanager
    def local_path(self, doc: SourceDocument) -> Iterator[Path]:
        sha = doc.content_hash.removeprefix("git-blob:")
        with tempfile.TemporaryDirectory(prefix="docingest-git-") as tmp:
            target = Path(tmp) / local_name(doc.path)  # any legal git path, read under a safe name
            with open(target, "wb") as fh:
                proc = subprocess.run(["git", "--git-dir", str(self.repo), "cat-file", "blob", sha], stdout=fh,
                                      stderr=subprocess.PIPE, env=self._env(), timeout=600)
            if proc.returncode != 0:
                raise SourceError(f"cannot read {doc.uri}: {proc.stderr.decode(errors='replace').strip()}")
            yield target
