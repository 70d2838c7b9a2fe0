"""Bring a Tinker-trained LoRA adapter home in peft format (loadable by peft and vLLM).

Download, by what the installed SDK offers:
- 0.16 line: the sampler checkpoint's archive (`RestClient.get_checkpoint_archive_url`, gone
  since 0.36), a tar of `adapter_model.safetensors` + `adapter_config.json`;
- 0.38 line: `save_weights_external` and one signed URL per file (`get_external_weights_urls`).
Signed URLs expire: they are signed again before a download that would start close to their
expiry and after every failed download; a file already downloaded is kept. Each download is
bounded in total time, not only between bytes.

Conversion: Tinker stores peft-style keys (`base_model.model.<module>.lora_A.weight`) with its own
names in places (`unembed_tokens` for the output layer) and an adapter_config.json without
`target_modules`. For dense models (Llama, Qwen3 dense; what SkyRL tx writes) the keys are renamed
and a complete peft config is written from the keys present. Mixture-of-experts adapters (3-D
expert tensors, `w1/w2/w3` names) need tinker-cookbook's `build_lora_adapter`; it is used when
installed, otherwise the adapter is kept in Tinker's own format and the record says so.
"""

from __future__ import annotations

import datetime
import json
import shutil
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from relxfer.services.tinker_client import TinkerError, call, rest_client

KEY_RENAMES = (("unembed_tokens", "lm_head"),)
PREFIX = "base_model.model."
DOWNLOAD_ATTEMPTS = 4  # failed downloads in all before the export fails; each retry signs the URLs again
EXPIRY_MARGIN_S = 60.0  # a URL expiring sooner than this is signed again before its download starts
ARCHIVE = "adapter.tar"
# {file path relative to the adapter: signed URL}, and when those URLs expire (None: not said)
Signed = tuple[dict[str, str], "datetime.datetime | None"]


def parse_tinker_path(path: str) -> tuple[str, str]:
    """(training run id, checkpoint id) of `tinker://run/kind/name` (the hosted form) or
    `tinker://run/name` (SkyRL tx's sampler paths)."""
    if not path.startswith("tinker://"):
        raise TinkerError(f"not a Tinker path: {path!r}")
    parts = path[len("tinker://") :].split("/")
    if len(parts) == 3:
        return parts[0], "/".join(parts[1:])
    if len(parts) == 2:
        return parts[0], parts[1]
    raise TinkerError(f"not a Tinker checkpoint path: {path!r}")


def download_adapter(
    service_client,
    training_client,
    sampler_path: str,
    dest: Path,
    timeout: float,
    attempts: int = DOWNLOAD_ATTEMPTS,
    backoff: float = 2.0,
) -> Path:
    """The trained adapter's files in `dest` (Tinker's format), by the route the SDK offers."""
    dest.mkdir(parents=True, exist_ok=True)
    rest = rest_client(service_client, timeout)
    if hasattr(training_client, "save_weights_external") and hasattr(rest, "get_external_weights_urls"):
        external = call(lambda: training_client.save_weights_external("relxfer-export"), timeout).path

        def sign_files() -> Signed:
            response = call(lambda: rest.get_external_weights_urls(external), timeout, retries=3)
            return dict(response.urls), getattr(response, "expires", None)

        download_signed(sign_files, dest, timeout, attempts, backoff)
        return dest
    run, checkpoint = parse_tinker_path(sampler_path)

    def sign_archive() -> Signed:
        response = call(lambda: rest.get_checkpoint_archive_url(run, checkpoint), timeout, retries=3)
        return {ARCHIVE: response.url}, getattr(response, "expires", None)

    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        download_signed(sign_archive, Path(tmp), timeout, attempts, backoff)
        _safe_extract(Path(tmp) / ARCHIVE, dest)
    return dest


def download_signed(
    sign: Callable[[], Signed], dest: Path, timeout: float, attempts: int = DOWNLOAD_ATTEMPTS, backoff: float = 2.0
) -> None:
    """Every file `sign()` names, into `dest`. URLs are signed again (another `sign()`) before a
    download that would start within EXPIRY_MARGIN_S of their expiry and after a failed
    download (an expired signature answers 400 or 403; a connection may drop); files already
    downloaded are kept. `attempts` failed downloads in all end the export in one line."""
    done: set[str] = set()
    failures = 0
    while True:
        urls, expires = sign()
        signed_at = time.monotonic()
        pending = [name for name in urls if name not in done]
        if not pending:
            return
        for name in pending:
            # URLs signed a moment ago are tried even when short-lived: signing again won't help.
            if _expiring(expires) and time.monotonic() - signed_at > 1.0:
                break
            try:
                _fetch(urls[name], _inside(dest, name), timeout)
            except OSError as error:
                failures += 1
                if failures >= attempts:
                    raise TinkerError(
                        f"downloading the trained adapter failed {failures} times, each time with freshly signed "
                        f"URLs; last: {name}: {error}"
                    ) from error
                time.sleep(backoff * 2 ** (failures - 1))
                break
            done.add(name)
        else:
            return


def _expiring(expires: datetime.datetime | None) -> bool:
    if expires is None:
        return False
    if expires.tzinfo is None:  # the SDK's timestamps are UTC
        expires = expires.replace(tzinfo=datetime.timezone.utc)
    left = (expires - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
    return left < EXPIRY_MARGIN_S


def _inside(dest: Path, relative: str) -> Path:
    target = (dest / relative).resolve()
    if not target.is_relative_to(dest.resolve()):
        raise TinkerError(f"unsafe file name in the exported adapter: {relative!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _fetch(url: str, target: Path, timeout: float) -> None:
    """Download `url` into `target` within `timeout` seconds in all (a TimeoutError past it)."""
    deadline = time.monotonic() + timeout
    tmp = target.with_name(f".{target.name}.part")
    with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
        while chunk := response.read(1 << 20):
            out.write(chunk)
            if time.monotonic() > deadline:
                raise TimeoutError(f"the download took longer than {timeout:g} s")
    tmp.replace(target)


def _safe_extract(archive: Path, dest: Path) -> None:
    base = dest.resolve()
    with tarfile.open(archive, "r:*") as tar:
        for member in tar.getmembers():
            if member.issym() or member.islnk() or not (dest / member.name).resolve().is_relative_to(base):
                raise TinkerError(f"unsafe entry {member.name!r} in the adapter archive")
        tar.extractall(dest)


def to_peft(raw: Path, out: Path, base_model: str, rank: int) -> dict:
    """Write a peft LoRA adapter for `base_model` into `out` from Tinker's files in `raw`.
    Returns what the record should say about the export."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(raw / "adapter_model.safetensors"))
    raw_config = (
        json.loads((raw / "adapter_config.json").read_text()) if (raw / "adapter_config.json").is_file() else {}
    )
    if any(
        t.dim() != 2 or ".experts." in k or k.rsplit(".lora_", 1)[0].endswith((".w1", ".w2", ".w3"))
        for k, t in tensors.items()
    ):
        return _expert_adapter(raw, out, base_model)
    renamed = {}
    for key, tensor in tensors.items():
        for old, new in KEY_RENAMES:
            key = key.replace(f".{old}.", f".{new}.")
        if not key.startswith(PREFIX):
            key = PREFIX + key
        if not key.endswith((".lora_A.weight", ".lora_B.weight")):
            raise TinkerError(f"unexpected tensor {key!r} in the Tinker adapter")
        renamed[key] = tensor.contiguous()
    modules = sorted({key.rsplit(".lora_", 1)[0].rsplit(".", 1)[-1] for key in renamed})
    from peft import LoraConfig

    config = LoraConfig(
        r=int(raw_config.get("r", rank)),
        # peft annotates lora_alpha as int, but scales by alpha / r: a fractional alpha stays one.
        lora_alpha=float(raw_config.get("lora_alpha", 32)),  # type: ignore[arg-type]
        target_modules=modules,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model,
        inference_mode=True,
    )
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out))
    save_file(renamed, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    return {"format": "peft", "target_modules": modules, "lora_alpha": config.lora_alpha}


def _expert_adapter(raw: Path, out: Path, base_model: str) -> dict:
    """Mixture-of-experts adapters: tinker-cookbook's converter when installed, else Tinker's own files."""
    try:
        from tinker_cookbook.weights import build_lora_adapter
    except ImportError:
        shutil.copytree(raw, out / "tinker", dirs_exist_ok=True)
        return {
            "format": "tinker",
            "reason": "mixture-of-experts adapter: convert it with tinker-cookbook's "
            "weights.build_lora_adapter (pip install tinker-cookbook; needs tinker>=0.38)",
        }
    converted = out.parent / f".{out.name}-cookbook"
    shutil.rmtree(converted, ignore_errors=True)
    build_lora_adapter(base_model=base_model, adapter_path=str(raw), output_path=str(converted))
    shutil.copytree(converted, out, dirs_exist_ok=True)
    shutil.rmtree(converted, ignore_errors=True)
    return {"format": "peft", "converter": "tinker_cookbook.weights.build_lora_adapter"}
