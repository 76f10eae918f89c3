"""Recognising copies: proven in order after the witness's sequence, unproven as possible copies only,
never more copies than there were records in doubt, and a witness message read back exactly."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bridge.archive.record import CopyMark, Source, SourceKind
from bridge.archiver.copies import CopyMatcher, InDoubt, read_in_doubt
from bridge.archiver.witness import decode_witness, encode_witness
from bridge.archiver.writer import RollPolicy, SegmentWriter
from protocol.core.message import Message
from protocol.loop import run
from sinks import LocalSink

A, B, C = b"a" * 16, b"b" * 16, b"c" * 16


def proven(*fingerprints: bytes, first_seq: int = 11) -> CopyMatcher:
    return CopyMatcher(InDoubt([(first_seq + i, fp) for i, fp in enumerate(fingerprints)], proven=True))


def test_redeliveries_of_the_records_in_doubt_are_proven_copies_of_them_in_order():
    matcher = proven(A, B, C)
    assert [matcher.classify(fp) for fp in (A, B, C)] == [CopyMark(11, True), CopyMark(12, True), CopyMark(13, True)]
    assert matcher.classify(A) is None  # all of them came: nothing more is ours


def test_identical_content_is_matched_one_record_at_a_time_and_never_beyond_those_in_doubt():
    matcher = proven(A, A, A)
    marks = [matcher.classify(A) for _ in range(5)]
    assert marks == [CopyMark(11, True), CopyMark(12, True), CopyMark(13, True), None, None]


def test_records_passed_over_were_removed_meanwhile_and_are_not_matched_later():
    matcher = proven(A, B, C)
    assert matcher.classify(B) == CopyMark(12, True)  # A expired (or was dead-lettered) before it came again
    assert matcher.classify(A) is None  # so this A is another message with A's content
    assert matcher.classify(C) == CopyMark(13, True)


def test_a_first_delivery_ends_the_matching_of_a_proven_session():
    matcher = proven(A, B)
    assert matcher.classify(A) == CopyMark(11, True)
    matcher.first_delivery()  # the broker sends requeued messages before any other
    assert matcher.classify(B) is None


def test_unproven_matches_are_possible_copies_and_a_first_delivery_does_not_end_them():
    matcher = CopyMatcher(InDoubt([(5, A), (6, B), (7, A)], proven=False))
    matcher.first_delivery()
    assert matcher.classify(A) == CopyMark(5, False)
    assert matcher.classify(A) == CopyMark(7, False)
    assert matcher.classify(A) is None
    assert matcher.classify(C) is None
    assert (matcher.copies, matcher.possible_copies) == (0, 2)


def test_nothing_in_doubt_matches_nothing():
    matcher = CopyMatcher(InDoubt())
    assert matcher.classify(A) is None


@given(
    st.lists(st.sampled_from([A, B, C]), max_size=30),
    st.lists(st.sampled_from([A, B, C]), max_size=40),
)
def test_copies_are_a_subsequence_of_the_records_in_doubt(in_doubt, redelivered):
    matcher = proven(*in_doubt, first_seq=1)
    seqs = []
    for fp in redelivered:
        mark = matcher.classify(fp)
        if mark is not None:
            assert mark.proven and in_doubt[mark.seq - 1] == fp, "a copy of a record with other content"
            seqs.append(mark.seq)
    assert seqs == sorted(set(seqs)), "a record matched twice, or out of order"


def test_the_witness_message_says_the_sequence_it_was_written_with():
    assert decode_witness(encode_witness(123456789)) == 123456789


def test_anything_else_in_the_witness_queue_says_nothing():
    assert decode_witness(b"hello") is None
    assert decode_witness(b"\x81\xa6format\x02") is None  # a later format
    assert decode_witness(b"") is None


def test_a_message_archived_twice_is_in_doubt_once(tmp_path):
    """Records 3 and 4 are unacknowledged; record 5 is a copy of 3 (the same message, delivered again)
    and record 6 a possible copy of 2 (acknowledged). The broker can deliver 3 (with 5), 4 and 6 again."""
    marks = {5: CopyMark(3, True), 6: CopyMark(2, False)}

    async def scenario() -> list[int]:
        sink = LocalSink(tmp_path)
        await sink.check()
        writer = SegmentWriter(sink, Source("/", SourceKind.QUEUE, "q"), policy=RollPolicy(max_records=2))
        await writer.start()
        for n in range(1, 7):
            writer.append_message(Message.build(b"same"), mark=marks.get(n))
        await writer.close()
        return [seq for seq, _ in await read_in_doubt(sink, writer.recent, 2)]

    assert run(scenario()) == [3, 4, 6]


def test_a_quorum_queues_redelivery_of_a_record_before_the_witness_is_a_possible_copy_never_a_proven_one():
    """rabbitmq/rabbitmq-server#10327: acknowledgements a quorum queue ignored come back, though the
    witness counted them."""
    matcher = CopyMatcher(InDoubt([(11, A), (12, B)], proven=True, earlier=[(9, C), (10, A)]))
    assert matcher.classify(C) == CopyMark(9, False)  # before the witness: possibly ours again
    assert matcher.classify(A) == CopyMark(11, True)  # the records in doubt are still proven, in order
    assert matcher.classify(B) == CopyMark(12, True)
    assert matcher.classify(A) == CopyMark(10, False)  # more of A than in doubt: possibly the earlier one
    assert (matcher.copies, matcher.possible_copies) == (2, 2)
    matcher.first_delivery()
    assert matcher.classify(C) is None  # after a first delivery nothing can be ours


def test_without_records_in_doubt_the_earlier_window_still_flags_redeliveries():
    matcher = CopyMatcher(InDoubt([], proven=True, earlier=[(7, A)]))
    assert matcher.classify(A) == CopyMark(7, False)
    assert matcher.classify(B) is None
