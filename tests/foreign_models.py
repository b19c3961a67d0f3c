"""Models dynaprune did not define, written the way people write them, for the generic surgery tests."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WordLanguageModel(nn.Module):
    """pytorch/examples word_language_model's RNNModel: encoder, one multi-layer recurrent module, decoder."""

    def __init__(self, rnn_type, ntoken, ninp, nhid, nlayers, dropout=0.2, tie_weights=False):
        super().__init__()
        self.ntoken = ntoken
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        if rnn_type in ("LSTM", "GRU"):
            self.rnn = getattr(nn, rnn_type)(ninp, nhid, nlayers, dropout=dropout)
        else:
            nonlinearity = {"RNN_TANH": "tanh", "RNN_RELU": "relu"}[rnn_type]
            self.rnn = nn.RNN(ninp, nhid, nlayers, nonlinearity=nonlinearity, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        if tie_weights:
            if nhid != ninp:
                raise ValueError("When using the tied flag, nhid must be equal to emsize")
            self.decoder.weight = self.encoder.weight
        self.rnn_type = rnn_type
        self.nlayers = nlayers

    def forward(self, input, hidden=None):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        output = self.drop(output)
        decoded = self.decoder(output)
        decoded = decoded.view(-1, self.ntoken)
        return F.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz):
        # The example reads self.nhid here; reading the module keeps it right after pruning.
        weight = next(self.parameters())
        shape = (self.nlayers, bsz, self.rnn.hidden_size)
        if self.rnn_type == "LSTM":
            return weight.new_zeros(shape), weight.new_zeros(shape)
        return weight.new_zeros(shape)


class BiGRUClassifier(nn.Module):
    """batch_first bidirectional GRU, LayerNorm over 2H, a Linear head on the last step, the mean
    over time, or the final states of both directions."""

    def __init__(self, vocab=20, embed=6, hidden=8, layers=2, classes=3, pool="last", layer_norm=True):
        super().__init__()
        self.pool = pool
        self.embedding = nn.Embedding(vocab, embed)
        self.gru = nn.GRU(embed, hidden, layers, batch_first=True, bidirectional=True)
        self.norm = nn.LayerNorm(2 * hidden) if layer_norm else nn.Identity()
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(2 * hidden, classes)

    def forward(self, tokens):
        output, h_n = self.gru(self.embedding(tokens))
        if self.pool == "last":
            features = output[:, -1]
        elif self.pool == "mean":
            features = output.mean(dim=1)
        else:
            features = torch.cat((h_n[-2], h_n[-1]), dim=1)
        return self.head(self.drop(self.norm(features)))


class TwoRecurrentModules(nn.Module):
    """Embedding -> 2-layer LSTM -> dropout -> GRU -> decoder (optionally tied to the embedding)."""

    def __init__(self, vocab=17, embed=6, first=7, second=6, tie_weights=False):
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed)
        self.lower = nn.LSTM(embed, first, num_layers=2)
        self.drop = nn.Dropout(0.1)
        self.upper = nn.GRU(first, second)
        self.decoder = nn.Linear(second, vocab)
        if tie_weights:
            self.decoder.weight = self.embedding.weight

    def forward(self, tokens):
        lower, _ = self.lower(self.embedding(tokens))
        upper, _ = self.upper(self.drop(lower))
        return self.decoder(upper)


class ProjectedLSTM(nn.Module):
    """An LSTM with proj_size: its output width is proj_size, whatever its cell units."""

    def __init__(self, vocab=15, embed=5, hidden=9, proj=4, layers=2, bidirectional=True):
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, layers, proj_size=proj, bidirectional=bidirectional, batch_first=True)
        self.head = nn.Linear(proj * (2 if bidirectional else 1), vocab)

    def forward(self, tokens):
        output, _ = self.lstm(self.embedding(tokens))
        return self.head(output)


class SumsOverUnits(nn.Module):
    """Pools the GRU's output over its hidden units: no unit can be removed without changing that sum."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(11, 4)
        self.gru = nn.GRU(4, 5, batch_first=True)
        self.score = nn.Linear(1, 2)

    def forward(self, tokens):
        output, _ = self.gru(self.embedding(tokens))
        return self.score(output.sum(dim=-1, keepdim=True))


class MixesByMatmul(nn.Module):
    """Multiplies the LSTM output by a raw parameter over the hidden axis (a functional projection)."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(11, 4)
        self.lstm = nn.LSTM(4, 5)
        self.mix = nn.Parameter(torch.randn(5, 3))
        self.head = nn.Linear(3, 2)

    def forward(self, tokens):
        output, _ = self.lstm(self.embedding(tokens))
        return self.head(output @ self.mix)


class FlattensTimeAndUnits(nn.Module):
    """Flattens (time, units) into one feature axis: a reshape that merges the unit axis with time."""

    def __init__(self, steps=6):
        super().__init__()
        self.embedding = nn.Embedding(11, 4)
        self.rnn = nn.RNN(4, 5, batch_first=True)
        self.head = nn.Linear(steps * 5, 2)

    def forward(self, tokens):
        output, _ = self.rnn(self.embedding(tokens))
        return self.head(output.reshape(output.shape[0], -1))


class ManyReadouts(nn.Module):
    """Time-major LSTM read several ways at once: the final state, a max over time, the last step
    through a transpose, and the embedding alongside, concatenated into one head."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(11, 4)
        self.lstm = nn.LSTM(4, 6, num_layers=2)
        self.head = nn.Linear(6 + 6 + 6 + 4, 3)

    def forward(self, tokens):
        embedded = self.embedding(tokens)
        output, (h, c) = self.lstm(embedded)
        batch_major = output.transpose(0, 1).contiguous()
        pooled = torch.stack([output.max(dim=0).values, output.amax(0)]).mean(0)
        features = torch.cat([h[-1], pooled, torch.relu(batch_major[:, -1]), embedded[-1]], dim=-1)
        return self.head(features.unsqueeze(0)).squeeze(0)
