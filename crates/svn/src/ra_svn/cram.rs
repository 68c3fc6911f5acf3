//! CRAM-MD5 (RFC 2195), the password mechanism every svnserve offers: the server sends
//! a challenge, the client answers `<user> <hex HMAC-MD5 of the challenge keyed with
//! the password>`, so the password itself never crosses the wire
//! (subversion/libsvn_ra_svn/cram.c).

use hmac::{Hmac, KeyInit, Mac};
use md5::Md5;

/// The answer to `challenge` for `username` and `password`.
pub(crate) fn answer(username: &str, password: &str, challenge: &[u8]) -> String {
    // HMAC accepts a key of any length.
    let mut mac = <Hmac<Md5> as KeyInit>::new_from_slice(password.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(challenge);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(username.len() + 1 + 32);
    out.push_str(username);
    out.push(' ');
    for byte in digest.iter() {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_rfc_2195() {
        assert_eq!(
            answer(
                "tim",
                "tanstaaftanstaaf",
                b"<1896.697170952@postoffice.reston.mci.net>"
            ),
            "tim b913a602c7eda7a495b4e6e7334d3890"
        );
    }
}
