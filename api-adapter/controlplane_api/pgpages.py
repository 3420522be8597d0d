"""`GET /jobs` on PostgreSQL: the statements of a page, keyset on the job id (time-ordered ids).

A deep page (a skipToken) once cost a lookup of the token's row before the page's query: two round
trips and two pool checkouts where the first page needs one, the slowest `GET /jobs` on a loaded
machine. The token's row is now probed in the page's own statement.
"""

from __future__ import annotations

from controlplane_workers.models import JobStatus


def page_queries(
    tenant: str | None, status: JobStatus | None, limit: int, after: str | None
) -> tuple[str, str | None, list[object]]:
    """`GET /jobs`'s statements, on the same arguments: the page's, `limit` + 1 rows newest first (one
    more says there is a next page); and, with a skipToken, the one to run should the page come back
    empty: the page from the top unless the token is the tenant's own (then the listing has ended).

    A skipToken continues after its job by id, whatever that job's status is now (a job that ended since
    its page does not end a listing by status). Only the tenant's own job starts a page: another
    tenant's id, or one not in the table, starts from the top and so tells nothing of that job. The
    token's row is probed in the page's own statement (a one-time filter), not by a round trip before
    it, so a deep page costs one statement as the first does: a keyset scan of the partitions'
    (tenant[, status], job_id) or job_id indexes, those newer than the token pruned."""
    args: list[object] = []

    def arg(value: object) -> str:
        args.append(value)
        return f"${len(args)}"

    where = " AND ".join(
        ["true"]
        + ([] if tenant is None else [f"tenant = {arg(tenant)}"])
        + ([] if status is None else [f"status = {arg(status.value)}"])
    )
    order = f"ORDER BY job_id DESC LIMIT {arg(limit + 1)}"
    if after is None:
        return f"SELECT * FROM cpw_jobs WHERE {where} {order}", None, args
    token = arg(after)
    own = f"EXISTS (SELECT FROM cpw_jobs WHERE job_id = {token}{'' if tenant is None else ' AND tenant = $1'})"
    return (
        f"SELECT * FROM cpw_jobs WHERE {where} AND job_id < {token} AND {own} {order}",
        f"SELECT * FROM cpw_jobs WHERE {where} AND NOT {own} {order}",
        args,
    )
