//! Certificates certgate makes: the issuing CA and the development PKI ([`ca`]) and
//! PKCS#12 bundles for browsers ([`p12`]).

pub mod assertion;
pub mod ca;
pub mod p12;
