"""The request path (serving.runtime.service.colorize_requests), without TorchServe: each
request gets its own answer, in order, and the stages' times."""

from __future__ import annotations

import json

import pytest

from serving.runtime.constants import STAGES
from serving.runtime.errors import EmptyInput
from serving.runtime.pipeline import ColorizePipeline
from serving.runtime.service import PhotoRequest, colorize_requests
from tests.support.photos import open_image, photo_paths


@pytest.fixture(scope="module")
def pipeline(tiny_model):
    return ColorizePipeline.load(tiny_model, "cpu", "fp32")


def test_each_request_gets_its_own_answer_in_order(pipeline):
    photo = photo_paths()[0].read_bytes()
    requests = [
        PhotoRequest(photo, format="png"),
        PhotoRequest(b"junk"),
        PhotoRequest(EmptyInput("the request carried no image")),
        PhotoRequest(photo, quality="101"),
        PhotoRequest(photo, accept="image/webp"),
    ]
    report = colorize_requests(pipeline, requests, max_pixels=40_000_000)
    got = [(a.status, a.content_type, a.error) for a in report.answers]
    assert got == [
        (200, "image/png", None),
        (400, "application/json", "not_an_image"),
        (400, "application/json", "empty_input"),
        (400, "application/json", "invalid_option"),
        (200, "image/webp", None),
    ]
    assert open_image(report.answers[0].body).size == open_image(photo).size
    assert json.loads(report.answers[3].body)["message"].startswith("quality must be")
    assert set(report.seconds) == set(STAGES) and all(s >= 0 for s in report.seconds.values())
    assert len(report.megapixels) == 2  # the photos that decoded and had valid options


def test_a_network_failure_fails_the_photos_that_reached_it(pipeline, monkeypatch):
    def broken(batch):
        raise RuntimeError("simulated out of memory")

    monkeypatch.setattr(pipeline, "infer", broken)
    photo = photo_paths()[0].read_bytes()
    report = colorize_requests(pipeline, [PhotoRequest(photo), PhotoRequest(b"")], 40_000_000)
    assert [(a.status, a.error) for a in report.answers] == [
        (500, "internal"),
        (400, "empty_input"),
    ]
    assert set(report.seconds) == {"decode"}
