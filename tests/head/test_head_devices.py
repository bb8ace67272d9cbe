"""The alignment head with the graph network on another device than the nodes (swift's ``device_map auto``
puts the image nodes on the first GPU and the text nodes on the last)."""

from __future__ import annotations

import torch
from torch import nn

from exgramed_plugin.alignment import MultiGraphAlignmentOutput
from exgramed_plugin.head.head import AlignmentHead
from exgramed_plugin.settings import MGASettings


class RecordingNetwork(nn.Module):
    """Stands in for the graph network on another device: ``meta``, the one other device a CPU machine has."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(1, device="meta"))
        self.devices: list[torch.device] = []

    def forward(self, z_image, z_text, z_extended, generator=None, loss_scale=None, split=None) -> MultiGraphAlignmentOutput:
        self.devices = [z.device for z in (z_image, z_text, z_extended)]
        zero = torch.zeros(())
        return MultiGraphAlignmentOutput(loss=zero, hamming={}, matching_accuracy=zero, num_nodes=z_image.shape[0])


def test_nodes_move_to_the_graph_network_device():
    network = RecordingNetwork()
    AlignmentHead(MGASettings(enabled=True)).align(network, torch.ones(3, 4), torch.ones(3, 4), torch.ones(3, 4))
    assert network.devices == [torch.device("meta")] * 3
