"""Cross-camera retrieval figures (CMC rank-k, mAP, mINP) in bounded memory. No Beam, no I/O.

The protocol is the one re-identification papers and torchreid report: each query is compared by
cosine similarity with the gallery, here every crop seen by *another* camera (a person is only
re-identified across cameras, so crops from the query's own camera, the same person's included,
never count). A query whose identity no other camera saw has no true match and is left out, as
torchreid leaves it out. For a query with ``n`` true matches at ranks ``r_1 < ... < r_n``:

- rank-k (CMC): 1 if ``r_1 <= k``;
- AP: ``mean_i(i / r_i)``; mAP is its mean over the queries;
- INP: ``n / r_n`` (Ye et al., "Deep Learning for Person Re-identification", 2021); mINP its mean.

Ties count against the query: a wrong gallery crop as similar as a true match ranks before it, so a
network that gives every crop the same feature scores 0, not 1.

Nothing of size queries x gallery is ever held: queries go in blocks of at most ``block`` rows,
the gallery in chunks sized to ``work_bytes``. For each block the similarities to the query's true
matches are computed first (from the rows of the block's identities only); then one sweep over
the gallery counts, for every true match, the wrong crops more similar than it (a batched
``searchsorted`` of each chunk's similarities into the block's sorted match similarities). The
ranks follow from those counts; no row of the gallery is ever sorted.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch

RANKS = (1, 5, 10)
DEFAULT_BLOCK = 512
DEFAULT_WORK_BYTES = 256 << 20
#: Bytes of work memory per (query, gallery) pair in a sweep: the similarity (4), its bucket
#: index (8), the count added (8) and two masks (2), rounded up.
_BYTES_PER_PAIR = 24
HISTOGRAM_BINS = 200


@dataclass
class RetrievalResult:
    """The figures of one evaluation, and per-query detail for reports."""

    rank1: float
    rank5: float
    rank10: float
    mAP: float
    mINP: float
    queries: int  # queries with at least one true match in another camera
    identities: int  # identities among those queries
    queries_without_match: int  # asked, but no other camera saw the identity
    rows: int
    cameras: int
    query_index: np.ndarray = field(repr=False)  # (queries,) row of each evaluated query
    average_precision: np.ndarray = field(repr=False)  # (queries,)
    first_match_rank: np.ndarray = field(repr=False)  # (queries,) 1-based
    histogram_edges: Optional[np.ndarray] = field(default=None, repr=False)
    same_identity_histogram: Optional[np.ndarray] = field(default=None, repr=False)
    different_identity_histogram: Optional[np.ndarray] = field(default=None, repr=False)

    def figures(self) -> dict:
        """The figures as plain JSON values (the keys ``--json`` writes)."""
        return {
            "rank1": self.rank1,
            "rank5": self.rank5,
            "rank10": self.rank10,
            "mAP": self.mAP,
            "mINP": self.mINP,
            "queries": self.queries,
            "identities": self.identities,
            "queries_without_match": self.queries_without_match,
            "rows": self.rows,
            "cameras": self.cameras,
        }


def label_codes(values: Sequence) -> np.ndarray:
    """Dense int64 codes for labels of any comparable type (equal labels, equal codes)."""
    return np.unique(np.asarray(values), return_inverse=True)[1].astype(np.int64).reshape(-1)


def normalise(features: np.ndarray) -> np.ndarray:
    """Float32 rows of unit L2 norm (a zero row stays zero); ValueError on NaN or inf."""
    matrix = np.asarray(features, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"features must be a 2-D matrix, got shape {matrix.shape}")
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(f"{bad.size} feature row(s) hold NaN or inf, e.g. row {int(bad[0])}")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1).astype(np.float32)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _query_blocks(query_ids: np.ndarray, group_size: np.ndarray, block: int,
                  max_pairs: int) -> Iterator[slice]:
    """Consecutive slices of the identity-sorted queries: at most ``block`` queries, and at most
    ``max_pairs`` (query, same-identity row) pairs, unless one query alone is over it."""
    start, members, previous = 0, 0, -1
    for position, identity in enumerate(query_ids):
        extra = group_size[identity] if identity != previous else 0
        count = position - start + 1
        if position > start and (count > block or count * (members + extra) > max_pairs):
            yield slice(start, position)
            start, members, extra = position, 0, group_size[identity]
        members += extra
        previous = identity
    if start < len(query_ids):
        yield slice(start, len(query_ids))


def evaluate_retrieval(
    features: np.ndarray,
    identities: Sequence,
    cameras: Sequence,
    query_mask: Optional[np.ndarray] = None,
    *,
    histogram_bins: int = 0,
    block: int = DEFAULT_BLOCK,
    work_bytes: int = DEFAULT_WORK_BYTES,
    device: str = "cpu",
    progress: Optional[Callable[[int], None]] = None,
) -> RetrievalResult:
    """Cross-camera retrieval figures for (N, D) features (normalised here) and N labels.

    ``query_mask`` (N bools) picks the queries (default: every row); the gallery is always every
    row. ``histogram_bins`` > 0 also counts the cosine of every (query, gallery) pair into
    same-identity and different-identity histograms over [-1, 1]. ``progress`` is called with
    the number of queries done after each block.
    """
    unit = torch.from_numpy(normalise(features))
    n_rows = unit.shape[0]
    ids = label_codes(identities) if n_rows else np.zeros(0, np.int64)
    cams = label_codes(cameras) if n_rows else np.zeros(0, np.int64)
    if ids.shape != (n_rows,) or cams.shape != (n_rows,):
        raise ValueError(f"{n_rows} features but {ids.size} identities and {cams.size} cameras")
    queries = np.arange(n_rows) if query_mask is None else np.flatnonzero(np.asarray(query_mask, bool))
    dev = _device(device)
    unit = unit.to(dev)
    # int32 codes: half the memory traffic of int64 in the (query, gallery) masks
    ids_t = torch.from_numpy(ids.astype(np.int32)).to(dev)
    cams_t = torch.from_numpy(cams.astype(np.int32)).to(dev)

    by_identity = np.argsort(ids, kind="stable")
    group_size = np.bincount(ids, minlength=int(ids.max(initial=-1)) + 1)
    group_start = np.concatenate([[0], np.cumsum(group_size)])
    queries = queries[np.argsort(ids[queries], kind="stable")]
    max_pairs = max(1, work_bytes // _BYTES_PER_PAIR)
    chunk = max(1, max_pairs // max(1, min(block, len(queries))))

    edges = np.linspace(-1.0, 1.0, histogram_bins + 1) if histogram_bins else None
    same_hist = np.zeros(histogram_bins, np.float64) if histogram_bins else None
    diff_hist = np.zeros(histogram_bins, np.float64) if histogram_bins else None

    done_index, done_ap, done_inp, done_first = [], [], [], []
    for part in _query_blocks(ids[queries], group_size, block, max_pairs):
        q_rows = queries[part]
        q_rows_t = torch.from_numpy(q_rows).to(dev)  # a tensor index: numpy arrays index slowly
        q_ids, q_cams = ids_t[q_rows_t].unsqueeze(1), cams_t[q_rows_t].unsqueeze(1)
        q_unit = unit[q_rows_t]

        # 1. similarities to the true matches, from the rows of the block's identities only
        members = np.concatenate([by_identity[group_start[i]:group_start[i + 1]]
                                  for i in np.unique(ids[q_rows])])
        members_t = torch.from_numpy(members).to(dev)
        sims = q_unit @ unit[members_t].T
        true = (ids_t[members_t] == q_ids) & (cams_t[members_t] != q_cams)
        n_true = true.sum(1)
        if same_hist is not None:
            same_hist += torch.histc(sims[true].clamp(-1, 1).double().cpu(), histogram_bins, -1, 1).numpy()
        keep = n_true > 0
        width = int(n_true.max()) if len(q_rows) else 0
        if width == 0:
            if progress:
                progress(len(q_rows))
            continue
        thresholds = torch.where(true, sims, torch.inf).sort(1).values[keep, :width].contiguous()
        n_true = n_true[keep]
        q_ids, q_cams, q_unit = q_ids[keep], q_cams[keep], q_unit[keep]
        q_rows = q_rows[keep.cpu().numpy()]
        del sims, true

        # 2. one sweep over the gallery: wrong crops at least as similar as each true match
        buckets = torch.zeros((len(q_rows), width + 1), dtype=torch.int64, device=dev)
        ones = torch.ones((len(q_rows), min(chunk, n_rows)), dtype=torch.int64, device=dev)
        for g0 in range(0, n_rows, chunk):
            g1 = min(n_rows, g0 + chunk)
            sims = q_unit @ unit[g0:g1].T
            not_wrong = (ids_t[g0:g1] == q_ids) | (cams_t[g0:g1] == q_cams)
            sims.masked_fill_(not_wrong, -torch.inf)
            if diff_hist is not None:
                diff_hist += torch.histc(sims.clamp(max=1).double().cpu(), histogram_bins, -1, 1).numpy()
            # number of thresholds <= each similarity: a crop in bucket b beats thresholds 0..b-1
            index = torch.searchsorted(thresholds, sims, right=True)
            buckets.scatter_add_(1, index, ones[:, : g1 - g0])
            del sims, not_wrong, index
        beaten_by = buckets.flip(1).cumsum(1).flip(1)[:, 1:]  # [:, j]: wrong crops >= threshold j

        # ranks of the true matches, ascending threshold j -> rank 1 + wrong above + true above
        n = n_true.unsqueeze(1)
        j = torch.arange(width, device=dev).unsqueeze(0)
        real = j < n
        ranks = (1 + beaten_by + (n - 1 - j)).double()
        order = (n - j).double()  # 1 for the most similar true match
        ap = torch.where(real, order / ranks, 0).sum(1) / n_true
        first = torch.gather(ranks, 1, (n - 1)).squeeze(1)
        inp = n_true.double() / ranks[:, 0]
        done_index.append(q_rows)
        done_ap.append(ap.cpu().numpy())
        done_inp.append(inp.cpu().numpy())
        done_first.append(first.cpu().numpy().astype(np.int64))
        if progress:
            progress(part.stop - part.start)

    index = np.concatenate(done_index) if done_index else np.zeros(0, np.int64)
    ap = np.concatenate(done_ap) if done_ap else np.zeros(0)
    inp = np.concatenate(done_inp) if done_inp else np.zeros(0)
    first = np.concatenate(done_first) if done_first else np.zeros(0, np.int64)
    mean = (lambda values: float(values.mean())) if index.size else (lambda values: float("nan"))
    return RetrievalResult(
        rank1=mean(first <= 1), rank5=mean(first <= 5), rank10=mean(first <= 10),
        mAP=mean(ap), mINP=mean(inp),
        queries=int(index.size), identities=int(np.unique(ids[index]).size),
        queries_without_match=int(len(queries) - index.size),
        rows=n_rows, cameras=int(np.unique(cams).size),
        query_index=index, average_precision=ap, first_match_rank=first,
        histogram_edges=edges, same_identity_histogram=same_hist,
        different_identity_histogram=diff_hist,
    )


def top_matches(
    features: np.ndarray, cameras: Sequence, query_rows: Sequence[int], k: int = 10,
    *, work_bytes: int = DEFAULT_WORK_BYTES, device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar rows from other cameras for each query row: (rows, cosines),
    each (len(query_rows), k), most similar first; -1 / NaN where the gallery has fewer."""
    dev = _device(device)
    unit = torch.from_numpy(normalise(features)).to(dev)
    cams_t = torch.from_numpy(label_codes(cameras)).to(dev)
    rows = torch.as_tensor(np.asarray(query_rows, np.int64), device=dev)
    best_sim = torch.full((len(rows), k), -torch.inf, device=dev)
    best_row = torch.full((len(rows), k), -1, dtype=torch.int64, device=dev)
    chunk = max(1, work_bytes // (_BYTES_PER_PAIR * max(1, len(rows))))
    for g0 in range(0, unit.shape[0], chunk):
        g1 = min(unit.shape[0], g0 + chunk)
        sims = unit[rows] @ unit[g0:g1].T
        sims = torch.where(cams_t[g0:g1] != cams_t[rows].unsqueeze(1), sims, -torch.inf)
        both_sim = torch.cat([best_sim, sims], 1)
        both_row = torch.cat([best_row, torch.arange(g0, g1, device=dev).expand(len(rows), -1)], 1)
        best_sim, at = both_sim.topk(min(k, both_sim.shape[1]), dim=1)
        best_row = torch.gather(both_row, 1, at)
    best_row = torch.where(torch.isinf(best_sim), -1, best_row)
    best_sim = torch.where(torch.isinf(best_sim), torch.nan, best_sim)
    return best_row.cpu().numpy(), best_sim.cpu().numpy()
