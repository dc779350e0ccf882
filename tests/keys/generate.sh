#!/bin/sh
# Regenerates the JWT signing keys used by the auth tests and benches (test-only
# material): PKCS#8 PEM private keys, and each public key as a JWK (`<name>.jwk.json`,
# kid = file name). rsa: 2048-bit RSA (RS*/PS*); ec256 and ec256b: P-256 (ES256; b is
# the "rotated" key); ec384: P-384 (ES384); ed25519: EdDSA.
set -e
cd "$(dirname "$0")"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa.pem
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ec256.pem
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ec256b.pem
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out ec384.pem
openssl genpkey -algorithm ED25519 -out ed25519.pem
# The RSA public key as PEM, for the algorithm-confusion test (HS256 keyed with it).
openssl pkey -in rsa.pem -pubout -out rsa.pub.pem
for k in rsa ec256 ec256b ec384 ed25519; do
  openssl pkey -in $k.pem -pubout -outform DER -out $k.spki.der
done
openssl rsa -in rsa.pem -noout -modulus | cut -d= -f2 > rsa.modulus
python3 - <<'PY'
import base64, json
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
def spki(name): return open(name + ".spki.der", "rb").read()
def write(name, jwk):
    jwk["kid"] = name
    json.dump(jwk, open(name + ".jwk.json", "w"), indent=2)
n = bytes.fromhex(open("rsa.modulus").read().strip())
write("rsa", {"kty": "RSA", "use": "sig", "n": b64(n), "e": "AQAB"})
for name, crv, size in [("ec256", "P-256", 32), ("ec256b", "P-256", 32), ("ec384", "P-384", 48)]:
    point = spki(name)[-(2 * size + 1):]
    assert point[0] == 4
    write(name, {"kty": "EC", "use": "sig", "crv": crv, "x": b64(point[1:1 + size]), "y": b64(point[1 + size:])})
write("ed25519", {"kty": "OKP", "use": "sig", "crv": "Ed25519", "x": b64(spki("ed25519")[-32:])})
PY
rm -f ./*.spki.der rsa.modulus
chmod 644 ./*.pem ./*.json
