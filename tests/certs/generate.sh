#!/bin/sh
# Regenerates the test PKI used by tests/it/tls_h2.rs and tests/it/config_check.rs.
# Test-only material: a private CA, leaf certificates for a.test and b.test
# (SAN = DNS name, 100-year validity, EC P-256, PKCS#8 keys) and a
# deliberately mismatched certificate/key pair.
set -e
cd "$(dirname "$0")"
gen_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }
gen_key ca.key
openssl req -x509 -new -key ca.key -sha256 -days 36500 -subj "/CN=Gatehouse Test CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.pem
for n in a b; do
  gen_key $n.test.key
  openssl req -new -key $n.test.key -subj "/CN=$n.test" -out $n.csr
  printf "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:$n.test\n" > $n.ext
  openssl x509 -req -in $n.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 36500 -sha256 -extfile $n.ext -out $n.test.pem
  rm $n.csr $n.ext
done
rm -f ca.srl
# a.test's certificate with an unrelated key: must be refused by `gatehouse check`.
cp a.test.pem mismatch.pem
gen_key mismatch.key
chmod 644 ./*.key
