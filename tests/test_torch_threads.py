"""Decoder work on one PyTorch thread; the encoder gets the threads back (napari_sam.torch_threads)."""

import threading

import torch

from napari_sam.torch_threads import decoding, encoding


def test_decoding_sets_one_thread_and_restores():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with decoding():
            assert torch.get_num_threads() == 1
            with decoding():  # nests
                assert torch.get_num_threads() == 1
            assert torch.get_num_threads() == 1
            with encoding():
                assert torch.get_num_threads() == 2
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with encoding():  # outside any decoding block: leaves the setting alone
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_decoding_on_a_worker_thread():
    seen = []

    def worker():
        torch.set_num_threads(2)
        with decoding():
            seen.append(torch.get_num_threads())
            with encoding():
                seen.append(torch.get_num_threads())
        seen.append(torch.get_num_threads())

    t = threading.Thread(target=worker)
    t.start()
    t.join(30)
    assert seen == [1, 2, 2]
