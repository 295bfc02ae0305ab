"""openai/glow's edge padding written out literally, as the reference's ``add_edge_padding`` +
VALID convolution do it: the oracle the edge-padded layers are compared with."""

import numpy as np


def edge_conv_literal(x, w, b=None):
    """Zero-pad ``x: (N, C, H, W)`` by ``p = k // 2``, append the channel that is 1 on the padded
    border and 0 on the image, and correlate with ``w: (C_out, C + 1, k, k)`` term by term."""
    n, c, h, v = x.shape
    k = w.shape[-1]
    p = k // 2
    frame = np.zeros((n, c + 1, h + 2 * p, v + 2 * p), dtype=np.result_type(x, w))
    frame[:, :c, p:p + h, p:p + v] = x
    frame[:, c] = 1.0
    frame[:, c, p:p + h, p:p + v] = 0.0
    y = np.zeros((n, w.shape[0], h, v), dtype=frame.dtype)
    for a in range(k):
        for bb in range(k):
            y += np.einsum("oc,nchw->nohw", w[:, :, a, bb], frame[:, :, a:a + h, bb:bb + v])
    return y if b is None else y + b.reshape(1, -1, 1, 1)
