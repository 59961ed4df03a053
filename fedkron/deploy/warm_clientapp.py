"""A long-lived ClientApp process for ``flower-supernode --isolation process``.

Flower's default (``--isolation subprocess``) starts a fresh ``flwr-clientapp`` process for every
message: Python, torch, transformers and the app are imported again, the task data is loaded and
tokenized again and the frozen base model is rebuilt, seconds each time. With ``--isolation
process`` Flower expects the operator to run the executor; this one acquires ClientApp tasks from
the SuperNode's Runtime API and runs them *in this process*, with Flower's own per-task steps
(pull input, install the FAB, load the app, push reply, context and status), so module-level caches
(fedkron's model and data caches) survive from one round to the next. Error-feedback state still
travels in the Flower context, exactly as with fresh processes.

One worker serves one app version (FAB hash) at a time: Python cannot unload modules, so when a
task of another version arrives the worker replaces itself (``exec``, same PID) with a fresh one that
serves that task first. A new ``flwr run`` of changed code thus pays the start-up once, not once
per message.

Run as a script (``python .../warm_clientapp.py``) so that it imports nothing of fedkron itself:
the app's code comes from the FAB that ``flwr run`` shipped, as with Flower's own executor. It
uses Flower 1.41's Runtime API client and per-task steps, private modules all taken from
``../flwr_private.py``, which refuses untested Flower releases.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time
from logging import ERROR, INFO

from flwr.app import Error, Message


def _flwr_private():
    """Flower's private modules, all from ``../flwr_private.py`` at the package root (which checks the
    installed Flower against the tested releases first). Run as a script, that file is loaded by
    path: ``import fedkron`` here would take fedkron from the environment, not from the FAB."""
    if __package__:  # imported as fedkron.deploy.warm_clientapp
        from fedkron import flwr_private  # here: run as a script, this file must import nothing of fedkron

        return flwr_private
    import importlib.util  # here: only the script path needs it

    here = os.path.dirname(os.path.realpath(__file__))  # sys.path[0] is the resolved folder too
    name = "_fedkron_flwr_private"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(here, os.pardir, "flwr_private.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    if sys.path and sys.path[0] == here:  # this folder's auth.py, cli.py, local.py... must not shadow anything
        del sys.path[0]
    return sys.modules[name]


fp = _flwr_private()  # every private Flower name below is fp.<name>


class WarmClientApp:
    """Acquire ClientApp tasks from one SuperNode and run them in this process."""

    def __init__(self, runtime_api_address: str, root_certificates: bytes | None = None):
        self.address = runtime_api_address
        self.root_certificates = root_certificates
        self.warm_fab_hash: str | None = None
        self.tasks_run = 0
        self._acquire = self._client(fp.RuntimeVersionHttpInterceptor(component_name="SuperExec"))
        self._load_app = fp.get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)

    def _client(self, *interceptors) -> fp.RuntimeHttpClient:
        return fp.RuntimeHttpClient.from_server_address(
            server_address=self.address,
            insecure=self.root_certificates is None,
            root_certificates=self.root_certificates,
            interceptors=list(interceptors),
            retry_invoker=fp.make_simple_http_retry_invoker(),
        )

    def serve(self, poll_interval: float = 0.2, restart_argv: list[str] | None = None) -> None:
        while True:
            res = self._acquire.AcquireTask(fp.AcquireTaskRequest(supported_task_types=[fp.TaskType.CLIENT_APP]))
            if res.HasField("task") and res.token:
                fab_hash = res.task.fab_hash or None
                if self.warm_fab_hash is not None and fab_hash not in (None, self.warm_fab_hash) and restart_argv:
                    fp.log(INFO, "[warm-clientapp] new app version %s: restarting with fresh modules", fab_hash[:12])
                    self._acquire.close()
                    os.execv(sys.executable, [sys.executable, *restart_argv, "--token", res.token])
                self.run_task(res.token)
                continue  # another task may be waiting: ask again at once
            time.sleep(poll_interval)

    def run_task(self, token: str) -> None:
        """Flower's per-task steps (as in ``flwr.supernode.runtime.run_clientapp``) without the exit."""
        t0 = time.perf_counter()
        client = self._client(
            fp.RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"), fp.RuntimeTokenHttpInterceptor(token)
        )
        heartbeat = fp.HeartbeatSender(fp.make_task_heartbeat_fn_http(client))
        heartbeat.start()
        message = context = reply = None
        t_app = 0.0
        sub_status, details = fp.SubStatus.FAILED, "ClientApp task failed due to unknown reason"
        try:
            message, context, run, fab = fp.pull_task_input(client)
            if self.warm_fab_hash is None:
                fp.install_from_fab(fab.content, skip_prompt=True)
                self.warm_fab_hash = fab.hash_str
            elif fab.hash_str != self.warm_fab_hash:
                raise fp.LoadClientAppError(
                    f"this warm ClientApp serves app {self.warm_fab_hash[:12]}, "
                    f"not {fab.hash_str[:12]}; restart the worker"
                )
            app = self._load_app(run.fab_id, run.fab_version, fab.hash_str)
            t_app = time.perf_counter()
            reply = app(message=message, context=context)
            t_app = time.perf_counter() - t_app
            sub_status, details = fp.SubStatus.COMPLETED, ""
        except Exception as ex:  # the SuperNode must get an error reply, and the worker must live on
            fp.log(ERROR, "ClientApp raised an exception", exc_info=ex)
            code = (
                fp.ErrorCode.LOAD_CLIENT_APP_EXCEPTION
                if isinstance(ex, fp.LoadClientAppError)
                else fp.ErrorCode.CLIENT_APP_RAISED_EXCEPTION
            )
            details = f"{type(ex)}:<'{ex}'>"
            if message is not None:
                reply = Message(Error(code=code, reason=details), reply_to=message)
        finally:
            try:
                if reply is not None and context is not None:
                    fp.push_message(client, reply, context)
            except Exception as ex:  # noqa: BLE001 - logged; the status below still goes out
                fp.log(ERROR, "Failed to push reply message", exc_info=ex)
            fp.push_task_output(client=client, context=context, sub_status=sub_status, details=details)
            heartbeat.stop()
            client.close()
        self.tasks_run += 1
        fp.log(
            INFO,
            "[warm-clientapp] task %d done in %.2f s, %.2f s of it in the app (%s)",
            self.tasks_run,
            time.perf_counter() - t0,
            t_app,
            sub_status,
        )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Long-lived ClientApp worker for flower-supernode --isolation process")
    p.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API, host:port (its --port)")
    p.add_argument("--root-certificates", help="CA of the SuperNode's Runtime API when it serves TLS")
    p.add_argument("--parent-pid", type=int, help="exit when this process (the SuperNode) exits")
    p.add_argument("--preload", default="", help="comma-separated modules to import before the first task")
    p.add_argument("--poll-interval", type=float, default=0.2, help="seconds between task polls")
    p.add_argument("--token", help=argparse.SUPPRESS)  # a task acquired before a restart (see module doc)
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    logging.getLogger("flwr").setLevel(logging.INFO)
    if args.parent_pid is not None:
        fp.start_parent_process_monitor(args.parent_pid)
    certs = open(args.root_certificates, "rb").read() if args.root_certificates else None
    worker = WarmClientApp(args.runtime_api_address, certs)
    restart_argv = [os.path.abspath(__file__), *_without_token(argv)]
    try:
        if args.token:  # restarted for a new app version: its task first (the app imports what it needs)
            worker.run_task(args.token)
        else:
            t0 = time.perf_counter()
            for name in filter(None, args.preload.split(",")):
                importlib.import_module(name)
            fp.log(
                INFO,
                "[warm-clientapp] ready on %s (preload %.1f s)",
                args.runtime_api_address,
                time.perf_counter() - t0,
            )
        worker.serve(args.poll_interval, restart_argv)
    except KeyboardInterrupt:  # SIGINT from the parent monitor
        sys.exit(0)


def _without_token(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--token":
            skip = True
        elif not arg.startswith("--token="):
            out.append(arg)
    return out


if __name__ == "__main__":
    main()
