"""MCP tools for workflows: ``workflow_list``, ``workflow_run`` and ``workflow_status``.

Registered by :func:`phonehome_jump.mcp_server.build_server` when a workflows directory is
given (``serve --workflows DIR``, default ./workflows if it exists). A run goes on in a
worker thread over the server's session manager (sessions owned by the calling client), so
no call blocks longer than its ``wait``: a longer run returns ``running: true`` and a
``run_id`` that ``workflow_status`` collects. The run takes the workflow's lock like the CLI
(:class:`~phonehome_jump.workflow.WorkflowLock`), so it cannot overlap a scheduled run of the
same workflow *when both use the same state directory* ($PHONEHOME_JUMP_STATE).
"""

import secrets
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Annotated, Any

from mcp.server.mcpserver import Context
from pydantic import BaseModel, Field

from .errors import PhonehomeJumpError, UnknownNameError, WorkflowError
from .inputs import Seconds, check_text
from .workflow import (STEP_KEEP, HostResult, RunResult, Workflow, WorkflowLock, discover_loaded,
                       run_workflow)

MAX_STEP_OUTPUT = 8000          # characters of one step's output in a tool result
KEEP_RUNS = 20                  # finished runs kept for workflow_status


class WorkflowInfo(BaseModel):
    name: str = Field(description="Pass to workflow_run.")
    file: str
    description: str | None = None
    targets: dict[str, Any] | None = Field(None, description="group, hosts or tags.")
    steps: list[str] = Field(default_factory=list, description="Step labels, in order.")
    vars: dict[str, str] = Field(default_factory=dict, description="Defaults; override with vars.")
    problem: str | None = Field(None, description="Why the file cannot be run (file:line).")


class WorkflowListOut(BaseModel):
    directory: str
    workflows: list[WorkflowInfo]


class WorkflowRunOut(BaseModel):
    run_id: str = Field(description="Pass to workflow_status while running is true.")
    workflow: str
    running: bool = Field(description="Hosts are still running: call workflow_status(run_id).")
    ok: bool = Field(description="Finished and every host passed.")
    failed_hosts: list[str]
    duration: float
    hosts: dict[str, Any] = Field(description="Per host: status, error, captured vars, and per "
                                              "step: status, output (secrets masked), "
                                              "truncated and omitted ([start, end] of a long "
                                              "output left out), exit_status, duration, "
                                              "captured, message.")
    note: str | None = None


class _Run:
    def __init__(self, run_id: str, result: RunResult, owner: str) -> None:
        self.id, self.result, self.owner = run_id, result, owner
        self.done = threading.Event()
        self.error: str | None = None


def _capped(text: str) -> str:
    if len(text) <= MAX_STEP_OUTPUT:
        return text
    half = MAX_STEP_OUTPUT // 2
    return (text[:half] + f"\n[… {len(text) - MAX_STEP_OUTPUT} characters of this step's result "
            f"omitted; the CLI's --report keeps up to {STEP_KEEP:,} characters of each end of "
            "its output …]\n" + text[-half:])


def _out(run: _Run) -> WorkflowRunOut:
    d = run.result.to_dict()
    for host in d["hosts"].values():
        for step in host["steps"]:
            step["output"] = _capped(step["output"])
    running = not run.done.is_set()
    note = (f"still running: call workflow_status(run_id={run.id!r}) for the rest" if running
            else run.error)
    return WorkflowRunOut(run_id=run.id, workflow=d["workflow"], running=running,
                          ok=d["ok"] and not running, failed_hosts=d["failed_hosts"],
                          duration=d["duration"], hosts=d["hosts"], note=note)


def register(mcp: Any, rt: Any, directory: Path, *, errors: Any, wait_cap: float,
             annotations: Any) -> None:
    """Add the workflow tools to ``mcp`` (``rt`` is the server's runtime; helpers passed in)."""
    runs: OrderedDict[str, _Run] = OrderedDict()
    runs_lock = threading.Lock()

    def find(name: str) -> Workflow:
        found = discover_loaded(directory)
        entry = found.get(name)
        if entry is None:
            by_stem = {Path(w.file).stem: w for w in found.values() if isinstance(w, Workflow)}
            entry = by_stem.get(name)
        if entry is None:
            from .inventory import _suggest
            raise UnknownNameError(f"no workflow named '{name}' in {directory}"
                                   + _suggest(name, found), hint="list them with workflow_list")
        if isinstance(entry, WorkflowError):
            raise entry.with_traceback(None)     # cached: no traceback of an earlier call
        return entry

    async def wait_for(run: _Run, wait: float) -> WorkflowRunOut:
        if wait > 0:
            await rt.call(lambda: run.done.wait(wait))
        return _out(run)

    @mcp.tool(annotations=annotations("List workflows", read_only=True, idempotent=True,
                                      open_world=False))
    async def workflow_list() -> WorkflowListOut:
        """The workflows (multi-step runbooks) this server can run, with targets and steps."""
        with errors("workflow_list"):
            # files are read in a worker thread (never on the event loop), and parsed again
            # only when they changed
            return await rt.call(listing)

    def listing() -> WorkflowListOut:
        out = []
        for name, wf in discover_loaded(directory).items():
            if isinstance(wf, WorkflowError):
                out.append(WorkflowInfo(name=name, file=str(wf.where or name),
                                        problem=str(wf)))
                continue
            s = wf.spec
            try:                      # targets and variables against this inventory
                wf.check(rt.inventory)
                problem = None
            except WorkflowError as err:
                problem = str(err)
            out.append(WorkflowInfo(
                name=wf.name, file=wf.file, description=s.description,
                targets=s.targets.model_dump(exclude_none=True),
                steps=[st.label for st in s.steps], vars=dict(s.vars), problem=problem))
        return WorkflowListOut(directory=str(directory), workflows=out)

    @mcp.tool(annotations=annotations("Run a workflow", destructive=True))
    async def workflow_run(
        name: Annotated[str, Field(description="Workflow name (see workflow_list).")],
        ctx: Context,
        hosts: Annotated[list[str] | None, Field(
            description="Only these of its target hosts (omit it for every target; an empty "
                        "list is refused).")] = None,
        vars: Annotated[dict[str, str] | None, Field(description="Variables to set or override "
                                                                 "(not secrets).")] = None,
        wait: Annotated[Seconds, Field(ge=0, description=f"Seconds to wait for the run (at most "
                                                       f"{wait_cap:g}); a longer run returns "
                                                       "running=true and a run_id.")] = 20.0,
    ) -> WorkflowRunOut:
        """Run a workflow on its hosts (one session per host, steps in order, hosts in parallel).

        Returns per-host, per-step results. If it takes longer than `wait`, running=true is
        returned with the results so far; collect the rest with workflow_status(run_id).
        """
        with errors("workflow_run"):
            check_text(name, "name")
            for h in hosts or ():
                check_text(h, "hosts")
            for k, v in (vars or {}).items():
                check_text(k, "vars")
                check_text(v, f"vars.{k}")
            owner = rt.owner(ctx)
            wf = await rt.call(lambda: find(name))
            values = dict(vars or {})
            manager = rt.manager
            # problems now, as tool errors (hosts=[] too: it is not "every target")
            names = wf.check(manager.inventory, hosts=hosts, vars=values)
            lock = WorkflowLock(wf).acquire(f"MCP workflow_run by client {owner}")
            # every host is in the result before the worker starts, so a status read while
            # the run starts never sees the dict change size
            result = RunResult(wf.name, wf.file, time.time(),
                               {n: HostResult(n, "pending") for n in names})
            run = _Run("w-" + secrets.token_hex(6), result, owner)

            def work() -> None:
                try:
                    run_workflow(wf, manager=manager, hosts=names, vars=values, owner=owner,
                                 result=run.result)
                except PhonehomeJumpError as err:
                    run.error = str(err)
                except Exception:     # noqa: BLE001 - reported as a note, logged with a ref
                    ref = secrets.token_hex(4)
                    import logging
                    logging.getLogger(__name__).exception("workflow run %s (ref %s)", run.id, ref)
                    run.error = f"internal error (ref {ref}); see the server log"
                finally:
                    lock.release()
                    run.result.finished = True
                    run.done.set()

            with runs_lock:
                runs[run.id] = run
                while len(runs) > KEEP_RUNS:
                    oldest = next(iter(runs))
                    if not runs[oldest].done.is_set():
                        break
                    runs.pop(oldest)
            threading.Thread(target=work, name=f"phj-{run.id}", daemon=True).start()
            return await wait_for(run, min(float(wait), wait_cap))

    @mcp.tool(annotations=annotations("Workflow run status", read_only=True, open_world=False))
    async def workflow_status(
        run_id: Annotated[str, Field(description="run_id from workflow_run.")],
        ctx: Context,
        wait: Annotated[Seconds, Field(ge=0, description=f"Seconds to wait for the run to finish "
                                                       f"(at most {wait_cap:g}).")] = 20.0,
    ) -> WorkflowRunOut:
        """Results of a workflow run so far (or final); waits up to `wait` for it to finish."""
        with errors("workflow_status"):
            owner = rt.owner(ctx)
            with runs_lock:     # a run belongs to the client that started it
                run = runs.get(run_id)
                run = run if run is not None and run.owner == owner else None
                known = [r.id for r in runs.values() if r.owner == owner]
            if run is None:
                raise UnknownNameError(f"no workflow run {run_id!r}",
                                       hint=("known runs: " + ", ".join(known)) if known
                                       else "start one with workflow_run")
            return await wait_for(run, min(float(wait), wait_cap))
