"""kernel.rpc.all_pages: every page of a listing, following next_page_token."""

from __future__ import annotations

from kernel.rpc import all_pages
from kernel.wire.accord.broker.v1 import broker_pb2
from kernel.wire.accord.common.v1 import common_pb2


def test_all_pages_follows_tokens_until_the_last_page() -> None:
    asked: list[tuple[int, str]] = []
    tokens = {"": "2", "2": "4", "4": ""}

    def fetch(page: common_pb2.PageRequest) -> broker_pb2.ListNodesResponse:
        asked.append((page.page_size, page.page_token))
        return broker_pb2.ListNodesResponse(
            page=common_pb2.PageInfo(next_page_token=tokens[page.page_token])
        )

    assert len(list(all_pages(fetch, page_size=2))) == 3
    assert asked == [(2, ""), (2, "2"), (2, "4")]


def test_a_single_page_is_fetched_once() -> None:
    calls = []

    def fetch(page: common_pb2.PageRequest) -> broker_pb2.ListNodesResponse:
        calls.append(page.page_token)
        return broker_pb2.ListNodesResponse()

    assert len(list(all_pages(fetch))) == 1 and calls == [""]
