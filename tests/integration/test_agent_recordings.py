"""Recording uploads: metadata round trip, verified delete, and an S3 outage that loses and duplicates nothing."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import EndpointConnectionError
from moto import mock_aws
from sip_trunk.agent import recordings
from sip_trunk.agent.__main__ import main
from sip_trunk.agent.config import AgentConfig

pytestmark = pytest.mark.integration

BUCKET = "test-recordings"
REGION = "us-east-1"


@pytest.fixture
def s3() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name=REGION)
        client.create_bucket(Bucket=BUCKET)
        # Versioning makes a second PUT of the same key visible: the proof that retries never duplicate.
        client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        yield client


@pytest.fixture
def config(tmp_path: Path) -> AgentConfig:
    return AgentConfig(stack="teststack", state_dir=tmp_path / "state", recordings_bucket=BUCKET)


def make_recording(directory: Path, name: str, size: int = 48_000) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(os.urandom(size))
    return path


class FlakyS3:
    """Wraps the moto client; while `down`, every call fails as if the endpoint were unreachable."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.down = False
        self.puts = 0

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)

        def call(**kwargs: Any) -> Any:
            if self.down:
                raise EndpointConnectionError(endpoint_url="https://s3.us-east-1.amazonaws.com")
            if name == "put_object":
                self.puts += 1
            return target(**kwargs)

        return call


def versions(s3: Any, key: str) -> list[dict[str, Any]]:
    return [v for v in s3.list_object_versions(Bucket=BUCKET, Prefix=key).get("Versions", []) if v["Key"] == key]


def test_upload_round_trip_with_metadata_deletes_only_after_verification(
    s3: Any, config: AgentConfig, tmp_path: Path
) -> None:
    # Given a finished recording
    rec = make_recording(tmp_path / "rec", "1700000000.42.wav")
    content = rec.read_bytes()

    # When the hangup handler uploads it
    result = recordings.upload_recording(
        config,
        s3,
        rec,
        call_id="1700000000.42",
        caller="+15551230000",
        callee="+15559870000",
        duration="37",
        config_version="v0123456789abcdef",
    )

    # Then the object holds the bytes and the call's metadata, the local file and the job are gone
    assert result["outcome"] == "uploaded"
    obj = s3.get_object(Bucket=BUCKET, Key=result["key"])
    assert obj["Body"].read() == content
    assert result["key"].startswith("recordings/teststack/")
    assert result["key"].endswith("1700000000.42.wav")
    assert obj["Metadata"] == {
        "call-id": "1700000000.42",
        "caller": "+15551230000",
        "callee": "+15559870000",
        "duration": "37",
        "config-version": "v0123456789abcdef",
        "sha256": hashlib.sha256(content).hexdigest(),
        "recorded-at": obj["Metadata"]["recorded-at"],
    }
    assert not rec.exists()
    assert list(config.queue_dir.glob("*.json")) == []


def test_outage_queues_then_flush_uploads_everything_exactly_once(s3: Any, config: AgentConfig, tmp_path: Path) -> None:
    flaky = FlakyS3(s3)
    recs = [make_recording(tmp_path / "rec", f"call-{i}.wav", 8_000 + i) for i in range(5)]
    contents = {r.name: r.read_bytes() for r in recs}

    # Given S3 is unreachable, when five calls end
    flaky.down = True
    outcomes = [
        recordings.upload_recording(
            config, flaky, r, call_id=f"call-{i}", caller="+1555", callee="+1666", duration="5", config_version=None
        )["outcome"]
        for i, r in enumerate(recs)
    ]
    # Then every recording is kept on disk with a durable job
    assert outcomes == ["queued"] * 5
    assert all(r.exists() for r in recs)
    assert len(list(config.queue_dir.glob("*.json"))) == 5
    assert flaky.puts == 0

    # And a flush during the outage changes nothing
    assert recordings.flush_recordings(config, flaky)["outcomes"] == {"queued": 5}

    # When S3 comes back and the timer flushes twice
    flaky.down = False
    first = recordings.flush_recordings(config, flaky)
    second = recordings.flush_recordings(config, flaky)

    # Then each recording was uploaded once, byte for byte, and removed locally; nothing remains queued
    assert first == {"outcomes": {"uploaded": 5}, "errors": {}, "remaining": 0, "ingested": []}
    assert second == {"outcomes": {}, "errors": {}, "remaining": 0, "ingested": []}
    assert flaky.puts == 5
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert len(keys) == 5
    for key in keys:
        assert len(versions(s3, key)) == 1
        name = key.rsplit("/", 1)[1]
        assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == contents[name]
    assert not any(r.exists() for r in recs)


def test_crash_after_upload_before_delete_does_not_upload_again(s3: Any, config: AgentConfig, tmp_path: Path) -> None:
    # Given a job whose upload reached S3, but the agent died before deleting the file and the job
    rec = make_recording(tmp_path / "rec", "call-9.wav")
    job_file = recordings.enqueue(
        config, rec, call_id="call-9", caller="", callee="", duration="1", config_version="v1"
    )
    job = recordings.Job(**json.loads(job_file.read_text()))
    s3.put_object(Bucket=BUCKET, Key=job.key, Body=rec.read_bytes(), Metadata=job.metadata)
    flaky = FlakyS3(s3)

    # When the queue is flushed
    result = recordings.flush_recordings(config, flaky)

    # Then HEAD proved the object complete: no second PUT, and the local copy and job are gone
    assert result["outcomes"] == {"uploaded": 1}
    assert flaky.puts == 0
    assert len(versions(s3, job.key)) == 1
    assert not rec.exists()
    assert not job_file.exists()


def test_partial_object_is_replaced_not_trusted(s3: Any, config: AgentConfig, tmp_path: Path) -> None:
    # Given a truncated object under the job's key (an interrupted upload by some other path)
    rec = make_recording(tmp_path / "rec", "call-10.wav")
    job_file = recordings.enqueue(
        config, rec, call_id="call-10", caller="", callee="", duration="1", config_version="v"
    )
    job = recordings.Job(**json.loads(job_file.read_text()))
    s3.put_object(Bucket=BUCKET, Key=job.key, Body=rec.read_bytes()[:100], Metadata=job.metadata)
    content = rec.read_bytes()

    # When flushed
    assert recordings.flush_recordings(config, s3)["outcomes"] == {"uploaded": 1}

    # Then the complete recording is what S3 serves
    assert s3.get_object(Bucket=BUCKET, Key=job.key)["Body"].read() == content


def test_missing_file_is_a_usage_failure_with_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    agent_env = tmp_path / "agent.env"
    agent_env.write_text(
        f"SIP_TRUNK_STACK=s\nSIP_TRUNK_STATE_DIR={tmp_path}\nSIP_TRUNK_RECORDINGS_BUCKET={BUCKET}\nAWS_REGION={REGION}\n"
    )
    code = main(
        ["upload-recording", str(tmp_path / "nope.wav"), "--call-id", "x"],
        agent_env_file=agent_env,
        role_env_file=tmp_path / "role.env",
    )
    assert code == 1
    assert '"ok": false' in capsys.readouterr().out


# --- the hangup handler's spool (the dialplan writes a job; the root agent uploads) ----------------------------


@pytest.fixture
def spool_config(tmp_path: Path) -> AgentConfig:
    return AgentConfig(
        stack="teststack",
        state_dir=tmp_path / "state",
        recordings_bucket=BUCKET,
        recordings_dir=tmp_path / "recording",
        recording_spool_dir=tmp_path / "spool",
    )


def hangup_job(config: AgentConfig, call_id: str, **overrides: str) -> Path:
    """A job file as the dialplan's [recording-upload] writes it, line by line, `end=1` last."""
    fields = {
        "file": str(config.recordings_dir / f"{call_id}.wav"),
        "call_id": call_id,
        "caller": "+15551230000",
        "callee": "+14155550100",
        "duration": "7",
        "end": "1",
        **overrides,
    }
    config.recording_spool_dir.mkdir(parents=True, exist_ok=True)
    job = config.recording_spool_dir / f"{call_id}.job"
    job.write_text("".join(f"{k}={v}\n" for k, v in fields.items() if v is not None))
    return job


def test_a_hangup_job_is_queued_and_uploaded_by_the_root_agent(s3: Any, spool_config: AgentConfig) -> None:
    # Given a finished recording and the job the hangup handler dropped for it
    recording = make_recording(spool_config.recordings_dir, "1700000000.42.wav")
    content = recording.read_bytes()
    job = hangup_job(spool_config, "1700000000.42")
    # When the path unit starts flush-recordings
    result = recordings.flush_recordings(spool_config, s3, config_version="v0123456789abcdef")
    # Then the recording is in S3 with the call's metadata, and nothing is left in the spool or on disk
    assert result["ingested"] == ["1700000000.42"], result
    assert result["outcomes"] == {"uploaded": 1}, result
    assert result["errors"] == {}
    (item,) = s3.list_objects_v2(Bucket=BUCKET)["Contents"]
    head = s3.head_object(Bucket=BUCKET, Key=item["Key"])
    assert head["Metadata"]["caller"] == "+15551230000"
    assert head["Metadata"]["callee"] == "+14155550100"
    assert head["Metadata"]["duration"] == "7"
    assert head["Metadata"]["config-version"] == "v0123456789abcdef"
    assert s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read() == content
    assert not job.exists()
    assert not recording.exists()
    assert list(spool_config.recording_spool_dir.iterdir()) == []


def test_a_job_queued_while_s3_is_away_survives_in_the_durable_queue(s3: Any, spool_config: AgentConfig) -> None:
    # Given a job, and S3 unreachable
    make_recording(spool_config.recordings_dir, "1700000000.43.wav")
    hangup_job(spool_config, "1700000000.43")
    flaky = FlakyS3(s3)
    flaky.down = True
    # When the path unit runs, then the timer after S3 is back
    first = recordings.flush_recordings(spool_config, flaky)
    flaky.down = False
    second = recordings.flush_recordings(spool_config, flaky)
    # Then the job left the spool at once (no re-trigger), waited in the queue and was uploaded exactly once
    assert (first["ingested"], first["outcomes"], first["remaining"]) == (["1700000000.43"], {"queued": 1}, 1)
    assert list(spool_config.recording_spool_dir.glob("*.job")) == []
    assert second["outcomes"] == {"uploaded": 1}, second
    assert len(versions(s3, s3.list_objects_v2(Bucket=BUCKET)["Contents"][0]["Key"])) == 1


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"caller": "+1555;rm -rf /"}, "bad caller"),
        ({"callee": "$(id)"}, "bad callee"),
        ({"file": "/etc/shadow"}, "is not"),
        ({"duration": "1; reboot"}, "bad duration"),
        ({"end": None}, "incomplete"),
        ({"extra": "x"}, "unexpected line"),
    ],
    ids=["caller-shell", "callee-subst", "file-outside", "duration-shell", "incomplete", "unknown-field"],
)
def test_a_hostile_or_broken_job_is_rejected_never_uploaded(
    s3: Any, spool_config: AgentConfig, overrides: dict[str, str | None], reason: str
) -> None:
    # Given a recording and a job that is not what the dialplan writes
    recording = make_recording(spool_config.recordings_dir, "1700000000.44.wav")
    job = hangup_job(spool_config, "1700000000.44", **overrides)  # type: ignore[arg-type]
    # When flushed (an incomplete job is waited for briefly, then rejected)
    result = recordings.flush_recordings(spool_config, s3) if reason != "incomplete" else None
    if result is None:
        spool = recordings.ingest_spool(spool_config, wait_s=0.2)
        result = {"errors": {f"spool/{k}": v for k, v in spool["rejected"].items()}, "ingested": spool["ingested"]}
    # Then it is moved aside for an operator with the reason, nothing is uploaded, the recording stays
    assert reason in result["errors"][f"spool/{job.name}"], result
    assert result["ingested"] == []
    assert (spool_config.recording_spool_dir / recordings.REJECTED / job.name).is_file()
    assert list(spool_config.recording_spool_dir.glob("*.job")) == []
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET)
    assert recording.exists()


def test_a_call_id_cannot_walk_out_of_the_recordings_directory(spool_config: AgentConfig) -> None:
    text = f"file={spool_config.recordings_dir}/../x.wav\ncall_id=../x\ncaller=\ncallee=\nduration=\nend=1\n"
    with pytest.raises(recordings.SpoolJobInvalid, match="bad call id"):
        recordings.parse_spool_job(text, spool_config.recordings_dir)
