//! A throwaway certificate authority for TLS tests: a CA, a server certificate for
//! `localhost` and `127.0.0.1`, and a client certificate, made with the `openssl` command
//! in a directory of the test's own.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use troupe::core::tls::TlsFiles;

/// The files of one test's CA.
pub struct Certs {
    /// The CA's certificate (what clients trust).
    pub ca: PathBuf,
    /// The server's certificate and key.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// The client's certificate and key (for servers that verify clients).
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Certs {
    /// Trust this CA and present the client certificate.
    pub fn client_files(&self) -> TlsFiles {
        TlsFiles {
            ca_file: Some(self.ca.clone()),
            cert_file: Some(self.client_cert.clone()),
            key_file: Some(self.client_key.clone()),
        }
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the openssl command must be installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A new P-256 key, unencrypted (`openssl req` options).
const NEW_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// `openssl req` with a new key written to `key`.
fn req(dir: &Path, key: &str, rest: &[&str]) {
    let args: Vec<&str> = ["req"]
        .into_iter()
        .chain(NEW_KEY)
        .chain(["-keyout", key])
        .chain(rest.iter().copied())
        .collect();
    openssl(dir, &args);
}

/// A leaf certificate for `name`, signed by the CA in `dir`.
fn leaf(dir: &Path, name: &str, extensions: &str) {
    let (key, csr, subject) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("/CN={name}"),
    );
    req(dir, &key, &["-out", &csr, "-subj", &subject]);
    std::fs::write(dir.join(format!("{name}.ext")), extensions).expect("write extensions");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{name}.pem"),
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

/// Makes a fresh CA and its certificates in `dir` (emptied first).
pub fn generate(dir: &Path) -> Certs {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("create the certificate directory");
    req(
        dir,
        "ca.key",
        &[
            "-x509",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=troupe-test-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    leaf(
        dir,
        "server",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    );
    leaf(
        dir,
        "client",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
    );
    Certs {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    }
}
