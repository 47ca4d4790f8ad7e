#!/usr/bin/env python3
"""Prints an --objects-file for the objects hack/synth-target.py's series name.

    hack/synth-objects.py SERIES > objects.yaml

Namespaces ns-0..ns-9, SERIES/10 pods in each (pod-J) and a service per 10 pods (svc-M). Every
pod carries app=web, shard=s(J mod 4), and g10/g100 = J div 10 / J div 100, so a labelSelector
g10=0 matches 10 pods of a namespace and g100=0 matches 100 (hack/bench.sh relies on this).
"""
import sys

NAMESPACES = 10


def main():
    per_ns = max(1, int(sys.argv[1]) // NAMESPACES)
    out = ["namespaces:"]
    out += [f"  - {{name: ns-{k}}}" for k in range(NAMESPACES)]
    out.append("pods:")
    for k in range(NAMESPACES):
        for j in range(per_ns):
            out.append(
                f"  - {{name: pod-{j}, namespace: ns-{k}, "
                f"labels: {{app: web, shard: s{j % 4}, g10: '{j // 10}', g100: '{j // 100}'}}}}"
            )
    out.append("services:")
    for k in range(NAMESPACES):
        for m in range((per_ns + 9) // 10):
            out.append(f"  - {{name: svc-{m}, namespace: ns-{k}, labels: {{app: web}}}}")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
