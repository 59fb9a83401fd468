// The Client Certificate Initialization page's script: the key pair is made here, in the
// browser (WebCrypto), a PKCS#10 request for it is sent with the page's ticket to
// /.certgate/enroll/csr, and the certificate that comes back is packed with the key into a
// passphrase-protected PKCS#12 file, offered as a download. The private key never leaves
// the page.
//
// The PKCS#12 has the same algorithms as certgate's server-made one (src/pki/p12.rs):
// PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC) for the key and the certificates, an
// HMAC-SHA256 MAC with an 8-byte salt, 100,000 iterations each.
//
// Without this script (JavaScript off, or WebCrypto missing) the page's form is a plain
// HTML form: the server makes the key, when the operator allows it.

import * as asn1js from "asn1js";
import * as pkijs from "pkijs";

const ITERATIONS = 100000;
const OID_CN = "2.5.4.3";
const OID_KEY_BAG = "1.2.840.113549.1.12.10.1.2";
const OID_CERT_BAG = "1.2.840.113549.1.12.10.1.3";
const OID_X509 = "1.2.840.113549.1.9.22.1";
const OID_FRIENDLY_NAME = "1.2.840.113549.1.9.20";
const OID_LOCAL_KEY_ID = "1.2.840.113549.1.9.21";

const KEY_TYPES = {
  "ec-p256": {
    generate: { name: "ECDSA", namedCurve: "P-256" },
    hash: "SHA-256",
  },
  "rsa-2048": {
    generate: {
      name: "RSASSA-PKCS1-v1_5",
      modulusLength: 2048,
      publicExponent: new Uint8Array([1, 0, 1]),
      hash: "SHA-256",
    },
    hash: "SHA-256",
  },
};

const utf8 = (s) => new TextEncoder().encode(s);

function buffer(view) {
  return view.buffer.slice(view.byteOffset, view.byteOffset + view.byteLength);
}

function pemBlocks(text, label) {
  const re = new RegExp(
    `-----BEGIN ${label}-----([A-Za-z0-9+/=\\s]+)-----END ${label}-----`,
    "g",
  );
  const out = [];
  for (const m of text.matchAll(re)) {
    const bin = atob(m[1].replace(/\s+/g, ""));
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    out.push(bytes.buffer);
  }
  return out;
}

function pem(label, der) {
  const bytes = new Uint8Array(der);
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  const b64 = btoa(bin).replace(/.{1,64}/g, "$&\n");
  return `-----BEGIN ${label}-----\n${b64}-----END ${label}-----\n`;
}

/** A new key pair of `type` (extractable: it goes into the PKCS#12 file). */
export async function makeKeys(type) {
  const spec = KEY_TYPES[type] || KEY_TYPES["ec-p256"];
  const keys = await crypto.subtle.generateKey(spec.generate, true, [
    "sign",
    "verify",
  ]);
  return { keys, hash: spec.hash };
}

/** A PKCS#10 request for `keys` (the gateway sets the certificate's names itself). */
export async function makeCsr(keys, hash, account) {
  const csr = new pkijs.CertificationRequest();
  csr.version = 0;
  // PKCS#10 requires the attributes field, even empty; PKI.js leaves it out unless set.
  csr.attributes = [];
  csr.subject.typesAndValues.push(
    new pkijs.AttributeTypeAndValue({
      type: OID_CN,
      value: new asn1js.Utf8String({ value: account }),
    }),
  );
  await csr.subjectPublicKeyInfo.importKey(keys.publicKey);
  await csr.sign(keys.privateKey, hash);
  return pem("CERTIFICATE REQUEST", csr.toSchema().toBER(false));
}

function bagAttributes(friendlyName, localKeyId) {
  return [
    new pkijs.Attribute({
      type: OID_FRIENDLY_NAME,
      values: [new asn1js.BmpString({ value: friendlyName })],
    }),
    new pkijs.Attribute({
      type: OID_LOCAL_KEY_ID,
      values: [new asn1js.OctetString({ valueHex: localKeyId })],
    }),
  ];
}

/**
 * A PKCS#12 file: the private key and `chainDer` (leaf first), protected by `passphrase`.
 */
export async function makePkcs12(privateKey, chainDer, passphrase, friendlyName) {
  const engine = pkijs.getCrypto(true);
  const password = buffer(utf8(passphrase));
  const pkcs8 = await crypto.subtle.exportKey("pkcs8", privateKey);
  // The leaf's SHA-1 is the usual localKeyId pairing key and certificate.
  const localKeyId = await crypto.subtle.digest("SHA-1", chainDer[0]);
  const keyBag = new pkijs.SafeBag({
    bagId: OID_KEY_BAG,
    bagValue: new pkijs.PKCS8ShroudedKeyBag({
      parsedValue: pkijs.PrivateKeyInfo.fromBER(pkcs8),
    }),
    bagAttributes: bagAttributes(friendlyName, localKeyId),
  });
  const certBags = chainDer.map(
    (der, i) =>
      new pkijs.SafeBag({
        bagId: OID_CERT_BAG,
        bagValue: new pkijs.CertBag({
          certId: OID_X509,
          certValue: new asn1js.OctetString({ valueHex: der }),
        }),
        bagAttributes: i === 0 ? bagAttributes(friendlyName, localKeyId) : undefined,
      }),
  );
  const encryption = {
    password,
    contentEncryptionAlgorithm: { name: "AES-CBC", length: 256 },
    hmacHashAlgorithm: "SHA-256",
    iterationCount: ITERATIONS,
  };
  await keyBag.bagValue.makeInternalValues(encryption, engine);
  const authenticatedSafe = new pkijs.AuthenticatedSafe({
    parsedValue: {
      safeContents: [
        { privacyMode: 1, value: new pkijs.SafeContents({ safeBags: certBags }) },
        { privacyMode: 0, value: new pkijs.SafeContents({ safeBags: [keyBag] }) },
      ],
    },
  });
  await authenticatedSafe.makeInternalValues(
    { safeContents: [{ ...encryption }, {}] },
    engine,
  );
  // The MAC, with an 8-byte salt (PFX.makeInternalValues uses 64 bytes, which macOS's
  // import is reported to refuse).
  const data = authenticatedSafe.toSchema().toBER(false);
  const salt = crypto.getRandomValues(new Uint8Array(8));
  const mac = await engine.stampDataWithPassword({
    password,
    hashAlgorithm: "SHA-256",
    salt: buffer(salt),
    iterationCount: ITERATIONS,
    contentToStamp: data,
  });
  const pfx = new pkijs.PFX({
    version: 3,
    authSafe: new pkijs.ContentInfo({
      contentType: pkijs.ContentInfo.DATA,
      content: new asn1js.OctetString({ valueHex: data }),
    }),
    macData: new pkijs.MacData({
      mac: new pkijs.DigestInfo({
        digestAlgorithm: new pkijs.AlgorithmIdentifier({
          algorithmId: pkijs.id_sha256,
          algorithmParams: new asn1js.Null(),
        }),
        digest: new asn1js.OctetString({ valueHex: mac }),
      }),
      macSalt: new asn1js.OctetString({ valueHex: buffer(salt) }),
      iterations: ITERATIONS,
    }),
  });
  return pfx.toSchema().toBER(false);
}

/**
 * Sends the request to `endpoint` (with the enrollment ticket, or for a renewal with the
 * browser's current certificate alone); the chain (DER, leaf first), or an Error to show.
 */
async function requestCertificate(endpoint, csrPem, ticket) {
  const headers = { "Content-Type": "application/pkcs10", Accept: "application/json" };
  if (ticket) headers.Authorization = `Bearer ${ticket}`;
  const resp = await fetch(endpoint, {
    method: "POST",
    headers,
    body: csrPem,
    credentials: "same-origin",
    cache: "no-store",
  });
  const text = await resp.text();
  if (!resp.ok) {
    let message = `The gateway refused the request (HTTP ${resp.status}).`;
    try {
      const v = JSON.parse(text);
      if (v.message) message = v.message;
    } catch (_) {
      /* not JSON: keep the status */
    }
    throw new Error(message);
  }
  const chain = pemBlocks(text, "CERTIFICATE");
  if (chain.length === 0) throw new Error("The gateway's answer held no certificate.");
  return chain;
}

function offerDownload(bytes, name) {
  const url = URL.createObjectURL(
    new Blob([bytes], { type: "application/x-pkcs12" }),
  );
  const a = document.getElementById("download");
  a.href = url;
  a.download = name;
  a.hidden = false;
  a.click();
}

function show(id, text) {
  const el = document.getElementById(id);
  if (el) {
    el.textContent = text;
    el.hidden = !text;
  }
}

async function generate(form) {
  const ticket = form.elements.ticket ? form.elements.ticket.value : "";
  const endpoint = form.dataset.endpoint || "/.certgate/enroll/csr";
  const passphrase = form.elements.passphrase.value;
  const account = form.dataset.account;
  const type = form.elements.key_type ? form.elements.key_type.value : "ec-p256";
  const button = form.querySelector("button");
  button.disabled = true;
  show("error", "");
  try {
    show("status", "Making your key pair in this browser…");
    const { keys, hash } = await makeKeys(type);
    const csr = await makeCsr(keys, hash, account);
    show("status", "Asking the gateway for your certificate…");
    const chain = await requestCertificate(endpoint, csr, ticket);
    show("status", "Packing your certificate and key into a protected file…");
    const p12 = await makePkcs12(keys.privateKey, chain, passphrase, `${account} (certgate)`);
    offerDownload(p12, `${account}.p12`);
    show("status", "");
    form.hidden = true;
    document.getElementById("done").hidden = false;
    const help = document.getElementById("import-help");
    if (help) help.open = true;
  } catch (e) {
    show("status", "");
    show("error", e && e.message ? e.message : String(e));
    button.disabled = false;
  }
}

function start() {
  const form = document.getElementById("enroll-form");
  if (!form) return;
  if (!window.crypto || !crypto.subtle) {
    // Not a secure context, or a browser without WebCrypto: the plain form stays.
    show("browser-note", "This browser cannot make the key itself here.");
    return;
  }
  form.dataset.mode = "browser";
  const mode = document.getElementById("mode");
  if (mode) mode.textContent = "Your browser makes the private key; it never leaves this page.";
  const choice = document.getElementById("key-choice");
  if (choice) choice.hidden = false;
  // A form that only works with this script (renewal) starts disabled.
  const button = form.querySelector("button");
  if (button) button.disabled = false;
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (form.reportValidity()) generate(form);
  });
}

if (document.readyState === "loading") {
  document.addEventListener("DOMContentLoaded", start);
} else {
  start();
}
