"""The trainer's final progress in its termination message (kubeclip/api/termination.py) and what the
pure planner makes of it (docs/contracts.md, "Progress"): plain strings and dicts in, a status out."""

from __future__ import annotations

import json

import pytest
from test_reconcile import _running_job, pod, run  # the reconcile tests' job/pod builders

from kubeclip.api import (
    FINAL_PROGRESS_MARKER,
    TERMINATION_MESSAGE_MAX_BYTES,
    LastCheckpoint,
    Progress,
    read_termination_message,
    termination_message,
)

FINAL = Progress(
    phase="done",
    epoch=1,
    epochs=2,
    step=100,
    totalSteps=100,
    loss=0.812345,
    samplesPerSecond=40.5,
    etaSeconds=0.0,
    eval={"image_to_text_R@1": 0.53125, "text_to_image_R@1": 0.5, "val_loss": 1.5},
    baseline={"image_to_text_R@1": 0.125},
    lastCheckpoint=LastCheckpoint(path="/out/checkpoints/step-00000100.pt", step=100, time=2.0),
    modelPath="/out/final",
    metricsPort=9090,
    updatedAt=1767323045.0,
    message="last weights exported; val i2t R@1 0.531 (start 0.125)",
)
#: What the controller polled last, before the final eval: older step, loss and R@1.
POLLED = {"phase": "training", "epoch": 1, "epochs": 2, "step": 90, "totalSteps": 100, "loss": 0.9, "eval": {}}
SUMMARY = "last weights exported; val i2t R@1 0.531 (start 0.125)"


def test_the_message_is_the_text_then_one_progress_line_that_reads_back():
    msg = termination_message(SUMMARY, FINAL)
    text, last = msg.rsplit("\n", 1)
    assert text == SUMMARY
    assert last.startswith(FINAL_PROGRESS_MARKER)
    assert "metricsPort" not in last
    assert "message" not in json.loads(last[len(FINAL_PROGRESS_MARKER) :])
    back = read_termination_message(msg)
    assert back.text == SUMMARY
    assert back.progress is not None
    assert back.progress.model_dump(exclude={"message", "metricsPort"}) == FINAL.model_dump(
        exclude={"message", "metricsPort"}
    )


def test_a_long_text_is_shortened_and_the_progress_kept_within_4096_bytes():
    table = " | ".join(
        f"alpha {a / 100:.2f}  val i2t R@1 0.5 retention R@1 0.25 zero-shot top1 0.6" for a in range(100)
    )
    msg = termination_message("exported alpha 0.5: ä " + table, FINAL)
    assert len(msg.encode("utf-8")) <= TERMINATION_MESSAGE_MAX_BYTES
    back = read_termination_message(msg)
    assert back.text.startswith("exported alpha 0.5: ä alpha 0.00")
    assert back.text.endswith("...")
    assert back.progress is not None
    assert back.progress.eval["image_to_text_R@1"] == 0.53125
    # Kubernetes keeps the last 4096 bytes: the message is all of them, the JSON intact
    assert read_termination_message(msg.encode()[-TERMINATION_MESSAGE_MAX_BYTES:].decode()).progress == back.progress


def test_a_progress_too_big_for_its_line_keeps_the_figures_status_shows():
    big = FINAL.model_copy(
        update={
            "eval": {**FINAL.eval, **{f"extra_{i}_mean_rank": float(i) for i in range(200)}},
            "skippedCheckpoints": ["step-1.pt: " + "x" * 290] * 10,
            "lastCheckpoint": LastCheckpoint(path="/out/" + "d" * 3000, step=100, time=2.0),
        }
    )
    msg = termination_message(SUMMARY, big)
    assert len(msg.encode()) <= TERMINATION_MESSAGE_MAX_BYTES
    back = read_termination_message(msg)
    assert back.text == SUMMARY
    assert back.progress is not None
    assert back.progress.eval == {"image_to_text_R@1": 0.53125, "text_to_image_R@1": 0.5}
    assert (back.progress.step, back.progress.totalSteps, back.progress.loss) == (100, 100, 0.812345)
    assert back.progress.lastCheckpoint is None
    assert back.progress.skippedCheckpoints == []


def test_no_progress_leaves_the_text_alone():
    assert termination_message("preflight: train.csv: no rows\n", None) == "preflight: train.csv: no rows"
    assert read_termination_message("preflight: train.csv: no rows") == ("preflight: train.csv: no rows", None)


GARBAGE = {
    "not json": FINAL_PROGRESS_MARKER + "{step: 100",
    "a list": FINAL_PROGRESS_MARKER + "[1, 2]",
    "NaN": FINAL_PROGRESS_MARKER + '{"step": 100, "loss": NaN}',
    "overflowing float": FINAL_PROGRESS_MARKER + '{"step": 100, "loss": 1e400}',
    "int beyond int64": FINAL_PROGRESS_MARKER + '{"step": ' + "9" * 30 + "}",
    "wrong type": FINAL_PROGRESS_MARKER + '{"step": "many", "eval": {"image_to_text_R@1": "high"}}',
    "unknown phase": FINAL_PROGRESS_MARKER + '{"phase": "exploded"}',
    "deep nesting": FINAL_PROGRESS_MARKER + "[" * 2000 + "]" * 2000,
    "oversized": FINAL_PROGRESS_MARKER + json.dumps({"step": 1, "modelPath": "p" * 5000}),
}


@pytest.mark.parametrize("line", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_progress_lines_give_no_progress_and_never_raise(line):
    assert read_termination_message("exported\n" + line) == ("exported", None)


@pytest.mark.parametrize("message", [None, "", 42, {"step": 1}, "Traceback (most recent call last):\n  boom"])
def test_messages_that_are_not_ours_have_no_progress(message):
    assert read_termination_message(message).progress is None


# ---- the planner ---------------------------------------------------------------------------------


def test_node0_terminated_with_its_final_progress_succeeds_with_it_in_status():
    msg = termination_message(SUMMARY, FINAL)
    _, j = run(
        _running_job(), [pod(0, "Succeeded", exit_code=0, reason="Completed", message=msg), pod(1)], progress=POLLED
    )
    st = j["status"]
    assert st["phase"] == "Succeeded"
    assert st["message"] == f"j-node-0 completed: {SUMMARY}"
    pr = st["progress"]
    assert (pr["phase"], pr["step"], pr["totalSteps"], pr["percent"]) == ("done", 100, 100, 100)
    assert pr["summary"] == "epoch 1/2 step 100/100"
    assert pr["loss"] == 0.8123
    assert pr["recallAt1"] == 0.5312
    assert pr["recallAt1Gain"] == 0.4062
    assert pr["etaSeconds"] == 0
    assert pr["lastCheckpointStep"] == 100
    assert pr["updatedAt"] == "2026-01-02T03:04:05Z"


def test_skipped_checkpoints_reported_while_it_ran_stay_in_status():
    j = _running_job()
    _, j = run(j, [pod(0), pod(1)], progress={**POLLED, "skippedCheckpoints": ["step-80.pt: truncated"]})
    msg = termination_message(SUMMARY, FINAL)  # its line leaves out an empty list
    _, j = run(j, [pod(0, "Succeeded", exit_code=0, message=msg), pod(1)])
    assert j["status"]["progress"]["step"] == 100
    assert j["status"]["progress"]["skippedCheckpoints"] == ["step-80.pt: truncated"]


@pytest.mark.parametrize("line", GARBAGE.values(), ids=GARBAGE.keys())
def test_a_garbage_final_progress_is_ignored_and_the_job_still_succeeds(line):
    msg = f"{SUMMARY}\n{line}"
    _, j = run(_running_job(), [pod(0, "Succeeded", exit_code=0, message=msg), pod(1)], progress=POLLED)
    st = j["status"]
    assert st["phase"] == "Succeeded"
    assert st["message"] == f"j-node-0 completed: {SUMMARY}"
    assert st["progress"]["step"] == 90  # the last poll, as without a final progress


def test_a_final_verdict_fails_with_rank0_progress_and_the_one_line_reason():
    at_verdict = Progress(phase="failed", epoch=0, epochs=2, step=37, totalSteps=100, loss=3.2, eval={})
    line = "training: loss is nan at step 38 (epoch 0); lower training.learningRate or set training.gradClipNorm"
    msg = termination_message(line, at_verdict)
    _, j = run(_running_job(), [pod(0, "Failed", exit_code=4, message=msg), pod(1)], progress=POLLED)
    st = j["status"]
    assert (st["phase"], st["reason"]) == ("Failed", "NonFiniteLoss")
    assert st["message"] == f"j-node-0 exited with code 4: {line}"
    assert FINAL_PROGRESS_MARKER not in st["message"]
    assert (st["progress"]["phase"], st["progress"]["step"], st["progress"]["percent"]) == ("failed", 37, 37)


def test_a_nan_eval_figure_is_left_out_and_the_rest_reads_back():
    nan = FINAL.model_copy(update={"eval": {"image_to_text_R@1": 0.5, "val_loss": float("nan")}})
    back = read_termination_message(termination_message(SUMMARY, nan)).progress
    assert back is not None
    assert back.eval == {"image_to_text_R@1": 0.5}
    assert back.step == 100
