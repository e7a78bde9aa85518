#!/usr/bin/env python3
"""Images of the gateway, the operator and the Graph emulator for the test node, without a registry.

    scripts/images.py [--profile debug|release] [--no-build] [--no-import] [--out DIR] [--check]

Each image is laid out from its Dockerfile's final stage, read here instruction by instruction
(COPY, USER, WORKDIR, ENV, ENTRYPOINT, CMD), and made by ../shared/kube/image.py from the binaries
cargo built on this machine: what runs in the test cluster is what the Dockerfile would ship, and a
final stage this script cannot reproduce (a RUN, a COPY it does not know) is an error, not drift.
Tags are ghcr.io/xmppfed/NAME:VERSION, VERSION being the workspace's (the chart's appVersion).

--no-build takes the binaries as they are in target/PROFILE (the cluster tests: `cargo test
--workspace` has built them). --check only reads the Dockerfiles and prints each layout (no binaries, no node needed).
Env: KUBE_SHARED (the folder of image.py; default ../shared/kube next to the checkout).
"""
import argparse, json, os, re, shlex, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Image name, Dockerfile, the binaries cargo builds for it (package, binary).
IMAGES = [
    ("gateway", "gateway/Dockerfile", [("xmppfed-gateway", "xmppfed-gateway")]),
    ("operator", "operator/Dockerfile", [("xmppfed-operator", "xmppfed-operator")]),
    ("graph-emulator", "e2e/Dockerfile", [("xmppfed-e2e", "graph-emulator")]),
]
# Where the builder stage leaves binaries and empty directories (`/out/bin`, `/out/data`).
BUILDER_BIN = "/out/bin/"


def fail(msg):
    sys.exit(f"images.py: {msg}")


def instructions(path):
    """The Dockerfile's instructions as (KEYWORD, text), continuations joined, comments dropped."""
    out, pending = [], ""
    with open(path) as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not pending and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            text = (pending + line).strip()
            pending = ""
            keyword, _, rest = text.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def final_stage(path):
    steps = instructions(path)
    starts = [i for i, (k, _) in enumerate(steps) if k == "FROM"]
    if not starts:
        fail(f"{path}: no FROM")
    return steps[starts[-1] + 1:]


def layout(path, binaries):
    """image.py's arguments for the final stage of the Dockerfile at `path`."""
    args, built = [], {name for _, name in binaries}
    for keyword, text in final_stage(path):
        if keyword in ("ARG", "LABEL", "EXPOSE"):
            continue
        if keyword == "COPY":
            words = shlex.split(text)
            flags = dict(w[2:].split("=", 1) for w in words if w.startswith("--"))
            paths = [w for w in words if not w.startswith("--")]
            if flags.get("from") != "builder" or len(paths) != 2:
                fail(f"{path}: COPY {text!r} is not one path from the builder stage")
            source, dest = paths
            owner = flags.get("chown", "0").split(":")[0]
            if source.startswith(BUILDER_BIN):
                name = source[len(BUILDER_BIN):]
                if name not in built:
                    fail(f"{path}: copies {name}, which no cargo binary of this image is")
                args += ["--bin", f"{{bin}}/{name}:{dest}"]
            else:
                # The builder's other outputs are empty directories (the store's, say).
                args += ["--dir", f"{dest}:{owner}"]
        elif keyword == "USER":
            args += ["--user", text]
        elif keyword == "WORKDIR":
            args += ["--workdir", text]
        elif keyword == "ENV":
            for pair in shlex.split(text):
                if "=" not in pair:
                    fail(f"{path}: ENV {pair!r} is not KEY=VALUE")
                args += ["--env", pair]
        elif keyword in ("ENTRYPOINT", "CMD"):
            try:
                words = json.loads(text)
            except json.JSONDecodeError:
                fail(f"{path}: {keyword} must be a JSON array (exec form), not {text!r}")
            args += [f"--{keyword.lower()}", json.dumps(words)]
        else:
            fail(f"{path}: the final stage's {keyword} cannot be reproduced without a base image")
    return args


def version():
    with open(os.path.join(ROOT, "Cargo.toml")) as f:
        m = re.search(r'^\[workspace\.package\][^\[]*?^version\s*=\s*"([^"]+)"', f.read(), re.M | re.S)
    if not m:
        fail("Cargo.toml: no [workspace.package] version")
    return m.group(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="debug", choices=["debug", "release"])
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--no-import", action="store_true")
    ap.add_argument("--out", help="also keep each image as DIR/NAME.tar (docker-archive)")
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    tag_version = version()
    layouts = [(name, layout(os.path.join(ROOT, df), bins), bins) for name, df, bins in IMAGES]
    if a.check:
        for name, args, _ in layouts:
            print(f"ok  {name}: {shlex.join(args)}")
        return
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    bin_dir = os.path.join(target, a.profile)
    build = ["cargo", "build", "--locked", "--quiet"] + (["--release"] if a.profile == "release" else [])
    for _, _, bins in layouts:
        for package, name in bins:
            build += ["-p", package, "--bin", name]
    if not a.no_build:
        subprocess.run(build, check=True, cwd=ROOT)
    for _, _, bins in layouts:
        for _, name in bins:
            if not os.path.isfile(os.path.join(bin_dir, name)):
                fail(f"{bin_dir}/{name} is not built ({shlex.join(build)})")
    shared = os.environ.get("KUBE_SHARED") or os.path.join(os.path.dirname(ROOT), "shared", "kube")
    if not os.path.exists(os.path.join(shared, "image.py")):
        shared = "/work/shared/kube"
    tool = os.path.join(shared, "image.py")
    if not os.path.exists(tool):
        fail(f"no image.py in {shared} (set KUBE_SHARED)")
    for name, args, _ in layouts:
        cmd = [sys.executable, tool, f"ghcr.io/xmppfed/{name}:{tag_version}"]
        cmd += [w.replace("{bin}", bin_dir) for w in args]
        if a.no_import:
            cmd.append("--no-import")
        if a.out:
            os.makedirs(a.out, exist_ok=True)
            cmd += ["--out", os.path.join(a.out, f"{name}.tar")]
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
