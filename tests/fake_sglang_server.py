"""A fake SGLang for the serving path: ``launch_server`` is a real HTTP server process on
127.0.0.1 (``/health``, ``/v1/models`` and a streaming ``/generate`` in SGLang's native
format, ``data: {...}`` lines), and ``benchmark/serving`` a client that drives it over HTTP
with the concurrency asked for and appends a result line with the keys SGLang's serving
benchmark writes. ``FAKE_SERVER_MODE`` makes the server misbehave: ``never-healthy``, ``die``
(exits after its first request), ``orphan`` (starts a child that ignores SIGTERM), ``slow``
(ignores SIGTERM itself)."""

import textwrap
from pathlib import Path

SERVER = textwrap.dedent('''
    import argparse, json, os, signal, subprocess, sys, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    p = argparse.ArgumentParser()
    p.add_argument("--model-path", required=True)
    p.add_argument("--quantization", required=True, choices=["modelopt_fp4"])
    p.add_argument("--fp4-gemm-backend", required=True, choices=[
        "auto", "flashinfer_cudnn", "flashinfer_cutedsl", "flashinfer_cutlass",
        "flashinfer_trtllm", "marlin"])
    p.add_argument("--disable-flashinfer-autotune", action="store_true")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args()
    mode = os.environ.get("FAKE_SERVER_MODE", "ok")
    with open(os.environ["FAKE_SGLANG_LOG"], "a") as f:
        f.write(json.dumps({"argv": sys.argv[1:], "pid": os.getpid(), "pgid": os.getpgid(0),
                            "cache": os.environ.get("SGLANG_CACHE_DIR"),
                            "reuse": os.environ.get("SGLANG_FLASHINFER_AUTOTUNE_CACHE")}) + "\\n")
    if mode == "orphan":
        child = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"])
        with open(os.environ["FAKE_SGLANG_LOG"], "a") as f:
            f.write(json.dumps({"child": child.pid}) + "\\n")
    if mode == "slow":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    step = 0.004 if a.disable_flashinfer_autotune else 0.003  # seconds per output token
    served = [0]

    class H(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if mode == "never-healthy" or self.path not in ("/health", "/v1/models"):
                self.send_response(503 if self.path == "/health" else 404)
                self.end_headers()
                return
            body = json.dumps({"data": [{"id": a.model_path}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if mode == "die" and served[0] >= 1:
                os._exit(3)
            served[0] += 1
            n = req["sampling_params"]["max_new_tokens"]
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for i in range(n):
                time.sleep(step)
                self.wfile.write(("data: " + json.dumps({"text": "x" * (i + 1),
                    "meta_info": {"completion_tokens": i + 1}}) + "\\n\\n").encode())
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\\n\\n")

    print(f"serving {a.model_path} on {a.host}:{a.port}", flush=True)
    ThreadingHTTPServer((a.host, a.port), H).serve_forever()
''')

CLIENT = textwrap.dedent('''
    import argparse, json, statistics, sys, time, urllib.request
    from concurrent.futures import ThreadPoolExecutor
    p = argparse.ArgumentParser()
    p.add_argument("--backend", required=True, choices=["sglang", "sglang-oai", "vllm"])
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--dataset-name", required=True, choices=["random", "sharegpt"])
    p.add_argument("--random-input-len", type=int, required=True)
    p.add_argument("--random-output-len", type=int, required=True)
    p.add_argument("--random-range-ratio", type=float, required=True)
    p.add_argument("--num-prompts", type=int, required=True)
    p.add_argument("--max-concurrency", type=int, required=True)
    p.add_argument("--output-file", required=True)
    a = p.parse_args()
    url = f"http://{a.host}:{a.port}/generate"

    def one(_):
        body = json.dumps({"text": "t " * a.random_input_len, "stream": True,
                           "sampling_params": {"max_new_tokens": a.random_output_len}}).encode()
        t0 = time.perf_counter()
        marks = []
        with urllib.request.urlopen(urllib.request.Request(url, data=body,
                headers={"Content-Type": "application/json"}), timeout=60) as r:
            for line in r:
                if line.startswith(b"data: ") and b"[DONE]" not in line:
                    marks.append(time.perf_counter())
        ttft = marks[0] - t0
        itls = [b - a for a, b in zip(marks, marks[1:])]
        return ttft, itls, (marks[-1] - marks[0]) / max(len(marks) - 1, 1), len(marks)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(a.max_concurrency) as ex:
        outs = list(ex.map(one, range(a.num_prompts)))
    dur = time.perf_counter() - t0
    ttfts = [o[0] * 1e3 for o in outs]
    itls = sorted(x * 1e3 for o in outs for x in o[1])
    tpots = [o[2] * 1e3 for o in outs]
    total = sum(o[3] for o in outs)
    q = lambda v, f: v[min(len(v) - 1, int(f * len(v)))]
    result = {"backend": a.backend, "dataset_name": a.dataset_name,
              "max_concurrency": a.max_concurrency, "completed": len(outs), "duration": dur,
              "total_output_tokens": total, "output_throughput": total / dur,
              "request_throughput": len(outs) / dur,
              "median_ttft_ms": statistics.median(ttfts), "p99_ttft_ms": max(ttfts),
              "mean_tpot_ms": statistics.mean(tpots), "median_tpot_ms": statistics.median(tpots),
              "p99_tpot_ms": max(tpots), "median_itl_ms": statistics.median(itls),
              "p99_itl_ms": q(itls, 0.99)}
    with open(a.output_file, "a") as f:
        f.write(json.dumps(result) + "\\n")
    print(f"Output token throughput (tok/s): {result['output_throughput']:.2f}")
''')


def install(site: Path) -> None:
    """Write the fake package under ``site`` (prepend it to sys.path and PYTHONPATH)."""
    pkg = site / "sglang"
    (pkg / "benchmark").mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "benchmark" / "__init__.py").write_text("")
    (pkg / "launch_server.py").write_text(SERVER)
    (pkg / "benchmark" / "serving.py").write_text(CLIENT)
