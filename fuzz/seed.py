#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target into corpus/<target>/ from the project's real
fixtures (forge webhook payloads and signature vectors, the example specs, captured Nix output)
and from NARs made by `nix-store --dump` (when nix is installed). Run from anywhere; files are named by their SHA-1, as
libFuzzer names them, so re-running adds nothing twice. The input formats are the ones the
targets' doc comments describe."""

import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FIXTURES = os.path.join(ROOT, "forge", "tests", "fixtures")
GITHUB, GITLAB, GITEA = 0, 1, 2
SHA = "4b5b8b9f1cf5c4c0e8ba4f4a2d5d9c7c4c0a1b2e"


def write(target, data):
    folder = os.path.join(HERE, "corpus", target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, hashlib.sha1(data).hexdigest()), "wb") as f:
        f.write(data)


def delivery(headers, body):
    head = "".join(f"{name}: {value}\n" for name, value in headers)
    return head.encode() + b"\n" + body


def read(*parts):
    with open(os.path.join(FIXTURES, *parts), "rb") as f:
        return f.read()


def webhooks():
    out = []
    for name in sorted(os.listdir(os.path.join(FIXTURES, "github"))):
        if "signature" in name:
            continue
        event = name.split(".")[0]
        headers = [("X-GitHub-Event", event), ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")]
        out.append((GITHUB, headers, read("github", name)))
    for name, event in [("push_hook.json", "Push Hook"), ("push_hook.json", "Tag Push Hook"),
                        ("merge_request_hook.json", "Merge Request Hook")]:
        headers = [("X-Gitlab-Event", event), ("Idempotency-Key", "f3b3c7e8-1c1d-4a4e-9c0d-6d1b0c3c2d11")]
        out.append((GITLAB, headers, read("gitlab", name)))
    push = read("gitea", "push.gitea-docs.json")
    out.append((GITEA, [("X-Gitea-Event", "push"), ("X-Gitea-Delivery", "d1")], push))
    out.append((GITEA, [("X-Forgejo-Event", "push"), ("X-Forgejo-Delivery", "d2")], push))
    # No upstream publishes a Gitea pull_request payload; this one has the fields gitea.rs reads.
    for action in ["opened", "synchronized", "closed", "label_updated"]:
        body = {
            "action": action, "number": 7,
            "pull_request": {
                "merged": action == "closed", "user": {"login": "alice"},
                "head": {"ref": "feature", "sha": SHA, "repo_id": 3, "repo": {"full_name": "bob/app"}},
                "base": {"ref": "main", "sha": SHA, "repo_id": 1, "repo": {"full_name": "org/app"}},
            },
            "repository": {"full_name": "org/app"},
        }
        out.append((GITEA, [("X-Gitea-Event", "pull_request")], json.dumps(body).encode()))
    out.append((GITHUB, [("X-GitHub-Event", "push")], b"not json"))
    out.append((GITLAB, [], b"{}"))
    return out


def webhook_parse():
    for kind, headers, body in webhooks():
        write("webhook_parse", bytes([kind]) + delivery(headers, body))


def signed(kind, secret, body, signature):
    if kind == GITHUB:
        headers = [("X-Hub-Signature-256", "sha256=" + signature)]
    elif kind == GITLAB:
        headers = [("X-Gitlab-Token", secret.decode())]
    else:
        headers = [("X-Gitea-Signature", signature)]
    return bytes([kind, len(secret)]) + secret + delivery(headers, body)


def webhook_verify():
    vectors = json.loads(read("github", "signature-test-vectors.json"))["vectors"]
    for v in vectors[:4]:
        secret, body = v["secret"].encode(), v["payload"].encode()
        write("webhook_verify", signed(GITHUB, secret, body, v["hmac_sha256_hex"]))
        write("webhook_verify", signed(GITEA, secret, body, v["hmac_sha256_hex"]))
        write("webhook_verify", signed(GITLAB, secret, body, ""))
    for v in json.loads(read("gitea", "signature-vectors.json"))["vectors"]:
        body = read("gitea", v["body_file"])
        write("webhook_verify", signed(GITEA, v["secret"].encode(), body, v["hmac_sha256_hex"]))
    # Forgejo's header, a wrong signature and one without the prefix.
    write("webhook_verify", bytes([GITEA, 1]) + b"s" + delivery([("X-Forgejo-Signature", "ab" * 32)], b"{}"))
    write("webhook_verify", bytes([GITHUB, 1]) + b"s" + delivery([("X-Hub-Signature-256", "ab" * 32)], b"{}"))


def spec_parse():
    examples = os.path.join(ROOT, "examples")
    for name in sorted(os.listdir(examples)):
        if name.endswith(".yaml"):
            with open(os.path.join(examples, name), "rb") as f:
                write("spec_parse", f.read())


def u64(n):
    return struct.pack("<Q", n)


def string(b):
    return u64(len(b)) + b + b"\0" * ((8 - len(b) % 8) % 8)


EXPORT_MAGIC = 0x4558494E
PATHS = [f"/nix/store/{c * 32}-{n}".encode() for c, n in [("0", "a"), ("1", "b"), ("2", "c")]]


def export(records):
    """An export stream: per path `1`, NAR, magic, path, references, deriver, `0`; then `0`."""
    out = b""
    for nar, path, refs in records:
        out += u64(1) + nar + u64(EXPORT_MAGIC) + string(path) + u64(len(refs))
        out += b"".join(string(r) for r in refs) + string(b"") + u64(0)
    return out + u64(0)


def nars():
    """NARs of a file, an executable, a symlink and a small tree, made by nix-store --dump."""
    result = []
    with tempfile.TemporaryDirectory() as tmp:
        tree = os.path.join(tmp, "tree")
        os.makedirs(os.path.join(tree, "bin", "sub"))
        with open(os.path.join(tree, "bin", "hello"), "w") as f:
            f.write("#!/bin/sh\necho hello\n")
        os.chmod(os.path.join(tree, "bin", "hello"), 0o755)
        with open(os.path.join(tree, "README"), "w") as f:
            f.write("a file of 27 bytes, padded\n")
        open(os.path.join(tree, "bin", "sub", "empty"), "w").close()
        os.symlink("bin/hello", os.path.join(tree, "link"))
        for path in [os.path.join(tree, "README"), os.path.join(tree, "bin", "hello"),
                     os.path.join(tree, "link"), os.path.join(tree, "bin", "sub", "empty"), tree]:
            result.append(subprocess.run(["nix-store", "--dump", path], check=True,
                                         capture_output=True).stdout)
    return result


def nar_copy(dumps):
    for nar in dumps:
        write("nar_copy", bytes([0, 0]) + nar)
        write("nar_copy", bytes([0, 0xFF]) + nar)
    tree = dumps[-1]
    stream = export([(dumps[0], PATHS[0], []), (tree, PATHS[1], [PATHS[0]]), (dumps[2], PATHS[2], [PATHS[0], PATHS[1]])])
    write("nar_copy", bytes([1, 0]) + stream)
    write("nar_copy", bytes([2, 0]) + stream)
    return stream


def serve_client(stream):
    handshake = u64(0x5452EECB) + u64(0x207)
    # nibbles: 0 build_paths, 1 query_valid_paths, 2 query_closure, 3 build_derivation, 4 export_paths, 15 stop
    build_ok = u64(0)
    build_failed = u64(100) + string(b"\x1b[31;1merror:\x1b[0m builder for '/nix/store/x.drv' failed with exit code 1")
    strings = u64(2) + string(PATHS[0]) + string(PATHS[1])
    result = u64(0) + string(b"") + u64(1) + u64(0) + u64(100) + u64(102) + u64(1) + string(b"sha256:abc!out") + string(b"{}")
    write("serve_client", bytes([0x10, 0xFF]) + handshake + build_ok + strings)
    write("serve_client", bytes([0x32, 0xFF]) + handshake + strings + result)
    write("serve_client", bytes([0xF0, 0xFF]) + handshake + build_failed)
    write("serve_client", bytes([0xF4, 0xFF]) + handshake + stream)
    write("serve_client", bytes([0x43, 0xFF]) + handshake + result + stream)
    write("serve_client", bytes([0xFF, 0xFF]) + u64(0x5452EECB) + u64(0x206))


def agent_hello():
    lines = [
        b'{"type":"hello","version":1,"name":"b1","systems":["x86_64-linux"],"features":["kvm"],"max_jobs":2,"token":null}',
        b'{"type":"hello","version":1,"name":"builder-2","systems":["x86_64-linux","aarch64-linux"],"features":["kvm","big-parallel","nixos-test"],"max_jobs":8,"token":"s3cret-token"}',
        b'{"type":"heartbeat","running":0}',
    ]
    for line in lines:
        write("agent_hello", line + b"\n")
    write("agent_hello", lines[1] + b"\n" + lines[2] + b"\n" + lines[2] + b"\n")


def nix_output():
    fixtures = os.path.join(ROOT, "nixcli", "tests", "fixtures")

    def files(folder, suffix):
        path = os.path.join(fixtures, folder)
        for name in sorted(os.listdir(path)):
            if name.endswith(suffix):
                with open(os.path.join(path, name), "rb") as f:
                    yield name, f.read()

    for _, text in files("drv", ".drv"):
        write("nix_output", b"\0" + text)
    for _, text in files("stderr", ".txt"):
        write("nix_output", b"\1" + text)
    for _, text in files("realise", ".stderr"):
        write("nix_output", b"\1" + text)
    for name, text in files("eval", ".json"):
        count = len(json.loads(text)) if name == "jobs.json" else 0
        write("nix_output", b"\2" + bytes([count]) + text)


def main():
    webhook_parse()
    nix_output()
    webhook_verify()
    spec_parse()
    agent_hello()
    try:
        dumps = nars()
    except (OSError, subprocess.CalledProcessError) as e:
        sys.exit(f"nix-store --dump failed ({e}): install Nix (make nix) to seed nar_copy and serve_client")
    serve_client(nar_copy(dumps))


if __name__ == "__main__":
    main()
