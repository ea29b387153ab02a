"""The one settings object: read from MMREC_*, validated, secrets kept out of reprs."""
from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from mmrec.settings import Settings


def test_reads_prefixed_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MMREC_CHANNELS", "16")
    monkeypatch.setenv("MMREC_ALLOWED_URI_SCHEMES", "file, https")
    monkeypatch.setenv("MMREC_MEDIA_ROOTS", "/srv/a,/srv/b")
    monkeypatch.setenv("CHANNELS", "4")  # no prefix: ignored
    s = Settings()
    assert s.channels == 16 and s.scorer_config().channels == 16
    assert s.allowed_uri_schemes == ("file", "https") and s.media_roots == (Path("/srv/a"), Path("/srv/b"))


@pytest.mark.parametrize(
    "env",
    [{"MMREC_KERNEL_SIZE": "0"}, {"MMREC_READOUT": "sideways"}, {"MMREC_PARTITIONS": "many"}, {"MMREC_SECURITY_PROTOCOL": "SASL_SSL"}],
)
def test_invalid_settings_are_refused(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_even_kernel_is_refused():
    with pytest.raises(ValidationError, match="odd"):
        Settings(kernel_size=4)


def test_secrets_stay_out_of_reprs_and_files_are_read(tmp_path: Path):
    secret_file = tmp_path / "password"
    secret_file.write_text("s3cret\n")
    s = Settings(security_protocol="SASL_SSL", sasl_username="svc", sasl_password_file=secret_file)
    assert s.password() == "s3cret"
    direct = Settings(security_protocol="SASL_PLAINTEXT", sasl_username="svc", sasl_password="hunter2")
    assert "hunter2" not in repr(direct) and "hunter2" not in str(direct.model_dump())
    assert direct.password() == "hunter2"


def test_to_env_round_trips(monkeypatch: pytest.MonkeyPatch):
    original = Settings(channels=4, allowed_hosts=("a.example", "b.example"), sasl_username="u", sasl_password="p", security_protocol="SASL_SSL")
    for name, value in original.to_env().items():
        monkeypatch.setenv(name, value)
    assert Settings() == original
