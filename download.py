"""Published weights by name: download them once into a cache, then name them to every tool.

    python download.py release            # the DepthART release (VAR-d16 fine-tuned on HyperSim), Google Drive
    python download.py var-d16            # VAR's official vae_ch160v4096z32.pth and var_d16.pth, Hugging Face Hub
    python download.py --list             # the names, what they are, where they are cached
    python download.py release --dir DIR  # another cache folder (or set DEPTHART_WEIGHTS=DIR for every tool)

Then `--checkpoint release` (infer_trt.py, export.py, evaluate.py, benchmark.py), `--init release`,
`--init-vae var-d16` and `--init-var var-d16` (train.py) and `infer_trt.load("release")` read the cached files.
Nothing downloads unless asked: `python download.py NAME`, or a tool's `--download` (the API's download=True).

The cache is DEPTHART_WEIGHTS, else $XDG_CACHE_HOME/depthart/weights, else ~/.cache/depthart/weights, one folder
per name. A file appears at its final name only complete and verified: its size, and its SHA-256 against the
digest its host publishes where one is known; where none is published (the release), the digest computed at the
first download is kept beside the file (FILE.sha256, sha256sum's format), so a later run of this script catches
a corrupted copy. Hub files go through huggingface_hub (resume, its own size check); the Google Drive file
through the steps below (Drive's "cannot scan for viruses" confirmation page, resume with a Range request).
An interrupted download resumes on the next run. Every failure is one line and exit status 1.

Tests point the hosts elsewhere: HF_ENDPOINT (huggingface_hub's own variable) and DEPTHART_GDRIVE_URL (default
https://drive.google.com).
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import http.client
import http.cookiejar
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import huggingface_hub
from huggingface_hub import errors as hf_errors
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
CHUNK = 1 << 20


@dataclass(frozen=True)
class Remote:
    """One published file. host "hub": location is "owner/repo@revision"; host "gdrive": the Drive file id."""
    filename: str
    role: str  # which tool argument takes it: checkpoint (--checkpoint, --init), vae (--init-vae), var (--init-var)
    host: str
    location: str
    size: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Weights:
    about: str
    files: tuple[Remote, ...]

    def file_for(self, role: str) -> Remote:
        matches = [f for f in self.files if f.role == role]
        if not matches and len(self.files) == 1:
            return self.files[0]
        if not matches:
            raise KeyError(role)
        return matches[0]


# The registry. A digest or size is recorded only where its host publishes it; the comment names where.
REGISTRY = {
    # Linked from the README of github.com/bulatko/DepthART ("model.safetensors", Google Drive file
    # 11-G5lpT9OM0LQRoczW0Hb15akX300wpG). Neither its size nor a digest is published there: the first
    # download's SHA-256 is kept beside the file.
    "release": Weights(
        "the paper's DepthART (VAR-d16 fine-tuned on HyperSim), from github.com/bulatko/DepthART",
        (Remote("model.safetensors", "checkpoint", "gdrive", "11-G5lpT9OM0LQRoczW0Hb15akX300wpG"),)),
    # huggingface.co/FoundationVision/var, pinned to revision 367386c (2024-04-19). Sizes and SHA-256 are the
    # Git LFS pointers of the commits that added them: vae_ch160v4096z32.pth in 2fc3ff1 ("[init up]",
    # huggingface.co/FoundationVision/var/commit/2fc3ff144f97ddd12207727b60dd6b997bc4cb69), var_d16.pth in
    # b57aae6 ("[upd] d16", huggingface.co/FoundationVision/var/commit/b57aae6ea98f0f29f5d6cdc36d1017ee9f01aba3).
    "var-d16": Weights(
        "VAR's official d16 checkpoints (ImageNet), to fine-tune from: --init-vae var-d16 --init-var var-d16",
        (Remote("vae_ch160v4096z32.pth", "vae", "hub", "FoundationVision/var@367386cbd701447557c18f0ba8fb3ad7d761ba75",
                436075834, "7c3ec27ae28a3f87055e83211ea8cc8558bd1985d7b51742d074fb4c2fcf186c"),
         Remote("var_d16.pth", "var", "hub", "FoundationVision/var@367386cbd701447557c18f0ba8fb3ad7d761ba75",
                1243116346, "4f6151aad91c94e03e224dd7358d8389fa05301c0c291279566998efb54b0ecb"))),
}


class DownloadError(Exception):
    """A download that failed; its message is one line for the user."""


class NotDownloaded(FileNotFoundError):
    """A registry name whose files are not in the cache (and no download was asked for)."""


# ----------------------------------------------------------------------------------------------
# Names to paths: what the tools call
# ----------------------------------------------------------------------------------------------
def cache_dir(override=None) -> Path:
    """The weights cache: the argument, else DEPTHART_WEIGHTS, else $XDG_CACHE_HOME (or ~/.cache)/depthart/weights."""
    if override:
        return Path(override).expanduser()
    if os.environ.get("DEPTHART_WEIGHTS"):
        return Path(os.environ["DEPTHART_WEIGHTS"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "depthart" / "weights"


def target_path(name: str, remote: Remote, root=None) -> Path:
    return cache_dir(root) / name / remote.filename


def download_command(name: str, root=None) -> str:
    """The command that downloads NAME, runnable from the current folder."""
    script = HERE / "download.py"
    try:
        shown = script.relative_to(Path.cwd())
    except ValueError:
        shown = script
    return f"python {shown} {name}" + (f" --dir {root}" if root else "")


def resolve(name_or_path, download: bool = False, role: str = "checkpoint", root=None, progress: bool = True):
    """A tool argument -> the path to read. An existing file or folder, and anything that is not a registry
    name, is returned as a Path unchanged (None stays None); a registry name becomes its cached file for
    `role` (checkpoint, vae or var). A name not yet downloaded is NotDownloaded (naming the command), unless
    download=True, which downloads it (with a progress bar) first; a failed download is DownloadError."""
    if name_or_path is None:
        return None
    path = Path(name_or_path).expanduser()
    if path.exists() or str(name_or_path) not in REGISTRY:
        return path
    name = str(name_or_path)
    try:
        remote = REGISTRY[name].file_for(role)
    except KeyError:
        raise ValueError(f"{name} holds no {role} weights ({', '.join(f.filename for f in REGISTRY[name].files)})") from None
    target = target_path(name, remote, root)
    if not target.is_file():
        if not download:
            raise NotDownloaded(f"{name} is not downloaded (no {target}): run `{download_command(name, root)}` "
                                f"(or add --download)")
        fetch(name, root, progress)
    if remote.size is not None and target.stat().st_size != remote.size:
        raise DownloadError(f"{target} is {target.stat().st_size} bytes, not the published {remote.size}: delete it "
                            f"and run `{download_command(name, root)}`")
    return target


def resolve_arg(value, download: bool = False, role: str = "checkpoint", prog: str | None = None):
    """resolve() for a command line: a failure is one line on stderr and exit status 2."""
    try:
        return resolve(value, download, role)
    except (NotDownloaded, DownloadError, ValueError) as e:
        print(f"{prog or Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


# ----------------------------------------------------------------------------------------------
# Downloading
# ----------------------------------------------------------------------------------------------
def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def fetch(name: str, root=None, progress: bool = True, log=print) -> list[Path]:
    """Download every file of registry entry NAME into the cache (skipping, after re-verifying, those already
    there) -> their paths. Raises DownloadError (one line) on any failure; never leaves a partial or
    unverified file at a final name."""
    if name not in REGISTRY:
        raise DownloadError(f"no weights named {name!r}; known: {', '.join(REGISTRY)}")
    paths = []
    for remote in REGISTRY[name].files:
        target = target_path(name, remote, root)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_file():
                verify_present(target, remote)
                log(f"{target}: already downloaded, verified")
            else:
                staged = (fetch_hub if remote.host == "hub" else fetch_gdrive)(remote, target, progress)
                digest = verify(staged, remote)
                os.replace(staged, target)
                write_sidecar(target, digest)
                log(f"{target}: {target.stat().st_size} bytes, SHA-256 {digest}"
                    + (" (as published)" if remote.sha256 else " (no published digest; kept beside the file)"))
        except OSError as e:
            raise DownloadError(os_message(e, target)) from None
        paths.append(target)
    return paths


def os_message(e: OSError, target: Path) -> str:
    if e.errno == errno.ENOSPC:
        return (f"disk full while writing {target.parent}: free some space and rerun (the partial download is kept "
                f"and resumes)")
    return f"{target}: {e.strerror or e}"


def verify(path: Path, remote: Remote) -> str:
    """Size and SHA-256 of a finished download against the published ones; a mismatch deletes it."""
    size = path.stat().st_size
    if remote.size is not None and size != remote.size:
        path.unlink()
        raise DownloadError(f"{remote.filename}: received {size} bytes, the host publishes {remote.size}: deleted; "
                            f"rerun to download it again")
    digest = file_sha256(path)
    if remote.sha256 is not None and digest != remote.sha256:
        path.unlink()
        raise DownloadError(f"{remote.filename}: SHA-256 {digest} is not the published {remote.sha256}: the "
                            f"download was deleted; rerun to download it again")
    return digest


def verify_present(target: Path, remote: Remote) -> None:
    """A file already in the cache: its digest against the published one, else the one kept at its download."""
    expected = remote.sha256
    if expected is None and sidecar(target).is_file():
        expected = sidecar(target).read_text().split()[0]
    digest = file_sha256(target)
    if expected is not None and digest != expected:
        raise DownloadError(f"{target} is corrupt (SHA-256 {digest}, expected {expected}): delete it and rerun")
    if expected is None:  # placed there by hand: keep its digest from now on
        write_sidecar(target, digest)


def write_sidecar(target: Path, digest: str) -> None:
    tmp = sidecar(target).with_suffix(".sha256.part")
    tmp.write_text(f"{digest}  {target.name}\n")
    os.replace(tmp, sidecar(target))


class _Silent(tqdm):
    def __init__(self, *args, **kwargs):
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


# Hugging Face Hub: huggingface_hub downloads (resume from its .incomplete file, size check) into a staging
# folder beside the target; the file moves to its final name only after our digest check.
def fetch_hub(remote: Remote, target: Path, progress: bool) -> Path:
    repo_id, revision = remote.location.split("@")
    staging = target.parent / ".hub"
    endpoint = os.environ.get("HF_ENDPOINT") or None  # read now, not at huggingface_hub's import
    host = endpoint or "huggingface.co"
    try:
        return Path(huggingface_hub.hf_hub_download(repo_id, remote.filename, revision=revision, local_dir=staging,
                                                    endpoint=endpoint, token=False,
                                                    tqdm_class=None if progress else _Silent))
    except hf_errors.LocalEntryNotFoundError:  # first: it is also an EntryNotFoundError
        raise DownloadError(f"cannot reach {host} to download {remote.filename} (no network?); rerun when online; "
                            f"a partial download resumes") from None
    except (hf_errors.RemoteEntryNotFoundError, hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError):
        raise DownloadError(f"{host} has no {repo_id}/{remote.filename} at revision {revision[:7]} (404 not found)") \
            from None
    except hf_errors.HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        raise DownloadError(f"{host} refused {remote.filename} (HTTP {status}); rerun later") from None
    except OSError:
        raise
    except Exception as e:  # huggingface_hub's transport errors and its size check
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DownloadError(f"downloading {remote.filename} from {host} failed: {first}; rerun to resume") from None


# Google Drive: GET uc?export=download&id=ID; a large file answers with a page ("Google Drive can't scan this
# file for viruses") whose form (id download-form) holds the confirmed link; a file answers with
# Content-Disposition. Bytes go to TARGET.part, resumed with a Range request.
class _FormParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.action, self.fields, self._in_form = None, {}, False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form" and a.get("id") == "download-form":
            self.action, self._in_form = a.get("action") or "", True
        elif tag == "input" and self._in_form and a.get("type") == "hidden" and a.get("name"):
            self.fields[a["name"]] = a.get("value") or ""

    def handle_endtag(self, tag):
        if tag == "form":
            self._in_form = False


QUOTA_MARKS = ("too many users have viewed or downloaded this file recently", "quota exceeded")


def gdrive_base() -> str:
    return (os.environ.get("DEPTHART_GDRIVE_URL") or "https://drive.google.com").rstrip("/")


def _open_part(path: Path, mode: str):  # one place that opens the partial file (tests simulate a full disk here)
    return open(path, mode)


def fetch_gdrive(remote: Remote, target: Path, progress: bool) -> Path:
    base = gdrive_base()
    host = urllib.parse.urlsplit(base).netloc
    part = target.with_name(target.name + ".part")
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    url = f"{base}/uc?" + urllib.parse.urlencode({"export": "download", "id": remote.location})
    for _ in range(3):  # the first answer, at most one confirmation page, the file
        have = part.stat().st_size if part.is_file() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            response = opener.open(request, timeout=60)
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # the partial file already holds everything
                return part
            if any(mark in e.read(1 << 20).decode("utf-8", "replace").lower() for mark in QUOTA_MARKS):
                raise DownloadError(quota_message(host, remote)) from None
            what = "not found (404)" if e.code == 404 else f"HTTP {e.code}"
            raise DownloadError(f"{host}: {remote.filename} (file id {remote.location}): {what}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            reason = getattr(e, "reason", e)
            raise DownloadError(f"cannot reach {host} to download {remote.filename} (no network?): {reason}") from None
        with response:
            if "attachment" in response.headers.get("Content-Disposition", "") or \
                    not response.headers.get_content_type().startswith("text/"):
                return _receive(response, part, have, remote, host, progress)
            page = response.read(1 << 20).decode("utf-8", "replace")
            url = _confirmed_url(page, response.geturl(), remote, host)
    raise DownloadError(f"{host} kept answering with pages, not {remote.filename}; download it in a browser")


def quota_message(host: str, remote: Remote) -> str:
    return (f"{host} refuses {remote.filename} for now: too many users downloaded it recently (Drive's quota); "
            f"rerun later")


def _confirmed_url(page: str, page_url: str, remote: Remote, host: str) -> str:
    if any(mark in page.lower() for mark in QUOTA_MARKS):
        raise DownloadError(quota_message(host, remote))
    form = _FormParser()
    form.feed(page)
    if form.action is None:
        raise DownloadError(f"{host} answered with a web page, not {remote.filename} (no confirmation form in it); "
                            f"is the file still shared?")
    action = urllib.parse.urljoin(page_url, form.action)
    return action + ("&" if "?" in action else "?") + urllib.parse.urlencode(form.fields)


def _receive(response, part: Path, have: int, remote: Remote, host: str, progress: bool) -> Path:
    """Stream a file response into PART (appending on a 206 that continues it), then check its length."""
    if have and response.status == 206 and response.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
        mode, start = "ab", have
    elif response.status == 206:  # a range we did not ask for: nothing to splice safely
        part.unlink(missing_ok=True)
        raise DownloadError(f"{host} answered with another part of {remote.filename} than asked for; the partial "
                            f"download was deleted; rerun")
    else:  # a fresh download, or a server that ignored the Range: start over
        mode, start = "wb", 0
    total = None
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
        total = int(content_range.rsplit("/", 1)[1])
    elif response.headers.get("Content-Length", "").isdigit():
        total = start + int(response.headers["Content-Length"])
    if remote.size is not None and total is not None and total != remote.size:
        raise DownloadError(f"{host} offers {remote.filename} with {total} bytes, not the published {remote.size}")
    received = start
    bar = tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=remote.filename, disable=not progress)
    try:
        with _open_part(part, mode) as out:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except (OSError, http.client.HTTPException) as e:
                    raise DownloadError(f"the transfer of {remote.filename} broke off at {received} bytes "
                                        f"({type(e).__name__}); rerun to resume") from None
                if not chunk:
                    break
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    finally:
        bar.close()
    if total is not None and received != total:
        raise DownloadError(f"the transfer of {remote.filename} broke off at {received} of {total} bytes; rerun to "
                            f"resume")
    return part


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("names", nargs="*", metavar="NAME", help=f"what to download: {', '.join(REGISTRY)}")
    p.add_argument("--dir", help=f"cache folder (default DEPTHART_WEIGHTS, else {cache_dir()})")
    p.add_argument("--list", action="store_true", help="list the names, what they are and whether they are here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.list or not args.names:
        for name, weights in REGISTRY.items():
            here = all(target_path(name, f, args.dir).is_file() for f in weights.files)
            print(f"{name}: {weights.about}; {'downloaded' if here else 'not downloaded'} "
                  f"({cache_dir(args.dir) / name})")
        return 0 if args.list else 2
    unknown = [n for n in args.names if n not in REGISTRY]
    if unknown:
        print(f"download.py: error: no weights named {', '.join(unknown)}; known: {', '.join(REGISTRY)}", file=sys.stderr)
        return 2
    for name in args.names:
        try:
            fetch(name, args.dir, progress=not args.quiet)
        except DownloadError as e:
            print(f"download.py: error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("download.py: interrupted; rerun to resume", file=sys.stderr)
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
