#!/usr/bin/env bash
# Issues a CA and a serving certificate for the adapter's Service (api.custom-metrics.svc), so the
# APIServices can carry a caBundle instead of insecureSkipTLSVerify.
#
#   hack/gen-certs.sh [DIR]      # DIR defaults to .local/serving-certs
#
# Writes into DIR:
#   ca.crt, ca.key               the CA (keep ca.key private)
#   tls.crt, tls.key             the serving certificate and key, for Secret custom-metrics-serving-cert
#   ca-bundle.b64                base64 of ca.crt: the APIServices' caBundle
#   apiservice-with-ca.yaml      the APIServices of apiservice/ with the caBundle filled in
# and prints the commands that install them. A CA already in DIR is reused, so running it again
# renews the serving certificate without changing the caBundle.
#
# Environment: SERVICE (api), NAMESPACE (custom-metrics), CA_DAYS (3650), DAYS (365).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-.local/serving-certs}"
service="${SERVICE:-api}"
namespace="${NAMESPACE:-custom-metrics}"
ca_days="${CA_DAYS:-3650}"
days="${DAYS:-365}"

if ! command -v openssl >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing openssl (Debian package)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends openssl >/dev/null
  else
    echo "gen-certs.sh needs openssl (Debian: apt-get install openssl)" >&2
    exit 1
  fi
fi

mkdir -p "$dir"
root_rel="$(realpath --relative-to="$(pwd)" "$root")"
cd "$dir"
umask 077

if [ ! -s ca.key ] || [ ! -s ca.crt ]; then
  openssl req -x509 -new -newkey rsa:2048 -nodes -sha256 -days "$ca_days" \
    -keyout ca.key -out ca.crt -subj "/CN=custom-metrics-adapter-ca" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

fqdn="${service}.${namespace}.svc"
openssl req -new -newkey rsa:2048 -nodes -sha256 -keyout tls.key -out tls.csr \
  -subj "/CN=${fqdn}" 2>/dev/null
cat >tls.ext <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:${fqdn},DNS:${fqdn}.cluster.local,DNS:${service},DNS:${service}.${namespace}
EXT
openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days "$days" \
  -extfile tls.ext -out tls.crt 2>/dev/null
rm -f tls.csr tls.ext ca.srl
chmod 644 ca.crt tls.crt
openssl verify -CAfile ca.crt -verify_hostname "$fqdn" tls.crt >/dev/null

ca_bundle="$(base64 <ca.crt | tr -d '\n')"
printf '%s\n' "$ca_bundle" >ca-bundle.b64

# The APIServices of apiservice/ with the placeholder replaced.
if command -v kubectl >/dev/null 2>&1; then
  kubectl kustomize "$root/apiservice" | sed "s|\${CA_BUNDLE}|${ca_bundle}|g" >apiservice-with-ca.yaml
  if grep -q 'CA_BUNDLE' apiservice-with-ca.yaml; then
    echo "apiservice-with-ca.yaml still holds the \${CA_BUNDLE} placeholder" >&2
    exit 1
  fi
else
  echo "kubectl not found: apiservice-with-ca.yaml not written" >&2
fi
chmod 644 ca-bundle.b64 apiservice-with-ca.yaml 2>/dev/null || true

cat <<MSG
Serving certificate for ${fqdn} (and ${fqdn}.cluster.local, ${service}, ${service}.${namespace})
in ${dir}: ca.crt ca.key tls.crt tls.key ca-bundle.b64 apiservice-with-ca.yaml

caBundle (base64 of ca.crt):
${ca_bundle}

Install:
  kubectl create namespace ${namespace} --dry-run=client -o yaml | kubectl apply -f -
  kubectl create secret tls custom-metrics-serving-cert -n ${namespace} \\
    --cert=${dir}/tls.crt --key=${dir}/tls.key --dry-run=client -o yaml | kubectl apply -f -
  kubectl apply -k ${root_rel}/deploy/overlays/provided-cert/
  kubectl apply -f ${dir}/apiservice-with-ca.yaml
MSG
