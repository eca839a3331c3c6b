"""Copies of a compiled package (.pt2) with edited metadata: other thresholds, or what a
package from elsewhere would say."""

import json
import zipfile


def rewrite_metadata(src, dst, edit):
    """A copy of package ``src`` with its metadata JSON passed through ``edit`` (None: removed)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("wrapper_metadata.json") and "/data/aotinductor/model/" in item.filename:
                meta = edit(json.loads(data))
                if meta is None:
                    continue
                data = json.dumps(meta).encode()
            zout.writestr(item.filename, data)
    return dst


def always_chunked(src, dst, edge_chunk=50):
    """The package taking its layer entries' chunked route for every graph with an edge, in
    chunks of about ``edge_chunk`` edges."""
    return rewrite_metadata(src, dst, lambda m: dict(m, chunked_edges="0", edge_chunk=str(edge_chunk)))


def without_layer_entries(src, dst):
    """What `equiformer-export --chunked-above -1` writes: no chunked route, no layer entries
    (the entries stay in the copy but its metadata no longer names them)."""
    return rewrite_metadata(src, dst, lambda m: {k: v for k, v in dict(m, chunked_edges="-1").items()
                                                 if k not in ("block_kinds", "readout_edges")})
