//! The messages of git's upload-pack protocol that polld speaks, whatever carries them
//! (`git://`, smart HTTP, ssh): the server's greeting (a protocol-v2 capability list or
//! a v0 ref advertisement), v2's `ls-refs`, and a fetch in v2 or v0.
//!
//! Why polld speaks it itself: libgit2 speaks only v0, where the server sends every ref
//! it has (a GitHub repository's `refs/pull/*` included) on every poll, and opens a new
//! connection each time. With v2's `ls-refs` and `ref-prefix` the server sends just the
//! watched refs, and the transports keep their connections; a poll that finds nothing
//! costs one small request.
//!
//! A fetch is stateless, as over HTTP: the client sends its wants, its haves (the heads
//! its mirror already has) and `done` at once, and the server answers with a pack on
//! side band 1 (progress on 2, a fatal error on 3). No thin packs are asked for, so the
//! pack is complete in itself.

use std::future::Future;

use git2::Oid;
use tokio::io::AsyncRead;

use crate::pkt::{self, DELIM, FLUSH, Pkt, PktReader};

/// Who polld says it is.
const AGENT: &str = concat!("polld/", env!("CARGO_PKG_VERSION"));

/// What a protocol-v2 server offers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Capabilities {
    ls_refs: bool,
    fetch: bool,
    agent: bool,
    /// `object-format=...`, when the server says (absent: sha1).
    object_format: Option<String>,
}

/// The server's first words.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Greeting {
    V2(Capabilities),
    /// A v0 advertisement: every ref, annotated tags followed by their `^{}` line.
    V0(Listed),
}

/// A ref listing: (name, id) pairs as advertised (an annotated tag's peeled commit as
/// a `name^{}` entry after it) and the branch HEAD points at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Listed {
    pub(crate) refs: Vec<(String, Oid)>,
    pub(crate) head: Option<String>,
    /// A v0 server's capabilities (from its first line), which its fetch must respect.
    pub(crate) capabilities: Vec<String>,
}

impl Capabilities {
    /// Whether the server can list and fetch in v2, as polld does.
    pub(crate) fn usable(&self) -> Result<bool, String> {
        if let Some(format) = &self.object_format
            && format != "sha1"
        {
            return Err(format!(
                "the repository uses {format} object ids; polld (libgit2) reads sha1 only"
            ));
        }
        Ok(self.ls_refs && self.fetch)
    }
}

/// Reads the server's greeting. Over HTTP the v0 advertisement starts with a
/// `# service=git-upload-pack` line and a flush, which are skipped.
pub(crate) async fn read_greeting<R: AsyncRead + Unpin>(
    reader: &mut PktReader<R>,
) -> Result<Greeting, String> {
    let mut first = match reader.next().await? {
        Pkt::Data(line) => line,
        // An empty repository served in v0 over git:// or ssh: just a flush.
        Pkt::Flush => return Ok(Greeting::V0(Listed::default())),
        other => return Err(format!("malformed greeting: {other:?}")),
    };
    if first.starts_with(b"# service=") {
        if reader.next().await? != Pkt::Flush {
            return Err("malformed advertisement after `# service=`".into());
        }
        first = match reader.next().await? {
            Pkt::Data(line) => line,
            Pkt::Flush => return Ok(Greeting::V0(Listed::default())),
            other => return Err(format!("malformed advertisement: {other:?}")),
        };
    }
    if let Some(error) = pkt::server_error(&first) {
        return Err(error);
    }
    if first == b"version 2\n" || first == b"version 2" {
        return read_capabilities(reader).await.map(Greeting::V2);
    }
    read_v0_advertisement(first, reader).await.map(Greeting::V0)
}

async fn read_capabilities<R: AsyncRead + Unpin>(
    reader: &mut PktReader<R>,
) -> Result<Capabilities, String> {
    let mut capabilities = Capabilities::default();
    loop {
        let line = match reader.next().await? {
            Pkt::Flush => return Ok(capabilities),
            Pkt::Data(line) => line,
            other => return Err(format!("malformed capability advertisement: {other:?}")),
        };
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end();
        let (key, value) = line.split_once('=').unwrap_or((line, ""));
        match key {
            "ls-refs" => capabilities.ls_refs = true,
            "fetch" => capabilities.fetch = true,
            "agent" => capabilities.agent = true,
            "object-format" => capabilities.object_format = Some(value.to_owned()),
            _ => {}
        }
    }
}

/// A v0 advertisement: `<id> <name>\0<capabilities>` first, then `<id> <name>` lines.
async fn read_v0_advertisement<R: AsyncRead + Unpin>(
    first: Vec<u8>,
    reader: &mut PktReader<R>,
) -> Result<Listed, String> {
    let mut listed = Listed::default();
    let (line, capabilities) = match first.iter().position(|&b| b == 0) {
        Some(nul) => (
            &first[..nul],
            String::from_utf8_lossy(&first[nul + 1..]).into_owned(),
        ),
        None => (&first[..], String::new()),
    };
    listed.capabilities = capabilities.split_whitespace().map(str::to_owned).collect();
    for capability in &listed.capabilities {
        if let Some(target) = capability.strip_prefix("symref=HEAD:") {
            listed.head = Some(target.to_owned());
        }
        if let Some(format) = capability.strip_prefix("object-format=")
            && format != "sha1"
        {
            return Err(format!(
                "the repository uses {format} object ids; polld (libgit2) reads sha1 only"
            ));
        }
    }
    let mut add = |line: &[u8]| -> Result<(), String> {
        let Ok(line) = std::str::from_utf8(line) else {
            // git allows any bytes in a ref name; such refs cannot be fetched by name.
            return Ok(());
        };
        let (hex, name) = line
            .trim_end_matches('\n')
            .split_once(' ')
            .ok_or_else(|| format!("malformed advertisement line {line:?}"))?;
        let oid = Oid::from_str(hex).map_err(|_| format!("malformed object id in {line:?}"))?;
        // An empty repository advertises `capabilities^{}` with the null id.
        if !oid.is_zero() {
            listed.refs.push((name.to_owned(), oid));
        }
        Ok(())
    };
    add(line)?;
    loop {
        match reader.next().await? {
            Pkt::Flush => return Ok(listed),
            Pkt::Data(line) => {
                if let Some(error) = pkt::server_error(&line) {
                    return Err(error);
                }
                add(&line)?;
            }
            other => return Err(format!("malformed advertisement: {other:?}")),
        }
    }
}

/// A v2 command's first part: `command=`, `agent=` and `object-format=` as the server
/// can take them, then the delimiter.
fn command(capabilities: &Capabilities, name: &str) -> Vec<u8> {
    let mut request = Vec::new();
    pkt::push(&mut request, format!("command={name}\n").as_bytes());
    if capabilities.agent {
        pkt::push(&mut request, format!("agent={AGENT}\n").as_bytes());
    }
    if capabilities.object_format.is_some() {
        pkt::push(&mut request, b"object-format=sha1\n");
    }
    request.extend_from_slice(DELIM);
    request
}

/// `ls-refs` for HEAD and the refs under `prefixes`, with HEAD's target and annotated
/// tags peeled. (`ref-prefix` is a hint a server may ignore: callers filter again.)
pub(crate) fn ls_refs_request(capabilities: &Capabilities, prefixes: &[String]) -> Vec<u8> {
    let mut request = command(capabilities, "ls-refs");
    pkt::push(&mut request, b"symrefs\n");
    pkt::push(&mut request, b"peel\n");
    pkt::push(&mut request, b"ref-prefix HEAD\n");
    for prefix in prefixes {
        pkt::push(&mut request, format!("ref-prefix {prefix}\n").as_bytes());
    }
    request.extend_from_slice(FLUSH);
    request
}

/// The answer to [`ls_refs_request`].
pub(crate) async fn read_ls_refs<R: AsyncRead + Unpin>(
    reader: &mut PktReader<R>,
) -> Result<Listed, String> {
    let mut listed = Listed::default();
    loop {
        let line = match reader.next().await? {
            Pkt::Flush => return Ok(listed),
            Pkt::Data(line) => line,
            other => return Err(format!("malformed ls-refs answer: {other:?}")),
        };
        if let Some(error) = pkt::server_error(&line) {
            return Err(error);
        }
        let Ok(line) = std::str::from_utf8(&line) else {
            continue;
        };
        let mut fields = line.trim_end_matches('\n').split(' ');
        let (Some(hex), Some(name)) = (fields.next(), fields.next()) else {
            return Err(format!("malformed ls-refs line {line:?}"));
        };
        let oid = Oid::from_str(hex).map_err(|_| format!("malformed object id in {line:?}"))?;
        let mut peeled = None;
        let mut target = None;
        for attribute in fields {
            if let Some(hex) = attribute.strip_prefix("peeled:") {
                peeled = Some(
                    Oid::from_str(hex).map_err(|_| format!("malformed peeled id in {line:?}"))?,
                );
            } else if let Some(symref) = attribute.strip_prefix("symref-target:") {
                target = Some(symref.to_owned());
            }
        }
        if name == "HEAD" {
            // HEAD's target is watched when `branches` is absent; it is not under any
            // requested prefix then, but HEAD's own line carries its id.
            if let Some(target) = &target {
                listed.refs.push((target.clone(), oid));
            }
            listed.head = target;
            continue;
        }
        listed.refs.push((name.to_owned(), oid));
        if let Some(peeled) = peeled {
            listed.refs.push((format!("{name}^{{}}"), peeled));
        }
    }
}

/// A v2 `fetch` of `wants`, telling the server the mirror has `haves`.
pub(crate) fn fetch_request_v2(
    capabilities: &Capabilities,
    wants: &[Oid],
    haves: &[Oid],
) -> Vec<u8> {
    let mut request = command(capabilities, "fetch");
    pkt::push(&mut request, b"ofs-delta\n");
    pkt::push(&mut request, b"no-progress\n");
    for want in wants {
        pkt::push(&mut request, format!("want {want}\n").as_bytes());
    }
    for have in haves {
        pkt::push(&mut request, format!("have {have}\n").as_bytes());
    }
    pkt::push(&mut request, b"done\n");
    request.extend_from_slice(FLUSH);
    request
}

/// A v0 fetch of `wants` from a server that advertised `capabilities`: the first want
/// carries the capabilities polld uses, of those the server has.
pub(crate) fn fetch_request_v0(
    server: &[String],
    wants: &[Oid],
    haves: &[Oid],
) -> Result<Vec<u8>, String> {
    let has = |name: &str| server.iter().any(|c| c == name);
    if !has("side-band-64k") {
        return Err("the server cannot send a pack on a side band (no side-band-64k)".into());
    }
    let mut asked = vec!["side-band-64k", "no-progress"];
    if has("ofs-delta") {
        asked.push("ofs-delta");
    }
    let agent = format!("agent={AGENT}");
    if server.iter().any(|c| c.starts_with("agent=")) {
        asked.push(&agent);
    }
    asked.retain(|c| has(c) || c.starts_with("agent="));
    let mut request = Vec::new();
    for (i, want) in wants.iter().enumerate() {
        let line = if i == 0 {
            format!("want {want} {}\n", asked.join(" "))
        } else {
            format!("want {want}\n")
        };
        pkt::push(&mut request, line.as_bytes());
    }
    request.extend_from_slice(FLUSH);
    for have in haves {
        pkt::push(&mut request, format!("have {have}\n").as_bytes());
    }
    pkt::push(&mut request, b"done\n");
    Ok(request)
}

/// Where a fetched pack's bytes go as they arrive.
pub(crate) trait PackSink: Send {
    fn write(&mut self, data: &[u8]) -> impl Future<Output = Result<(), String>> + Send;
}

/// Reads the pack a fetch answers with, handing its bytes to `pack` as they arrive.
/// A v2 answer is sections (`packfile` last); a v0 answer is `ACK`/`NAK` lines first.
/// Either way the pack comes on side band 1 until a flush.
pub(crate) async fn read_pack<R: AsyncRead + Unpin + Send>(
    reader: &mut PktReader<R>,
    pack: &mut impl PackSink,
) -> Result<(), String> {
    loop {
        let line = match reader.next().await? {
            Pkt::Data(line) => line,
            // Between v2 sections.
            Pkt::Delim => continue,
            Pkt::Flush | Pkt::End => return Err("the server sent no pack".into()),
        };
        if let Some(error) = pkt::server_error(&line) {
            return Err(error);
        }
        if line.starts_with(b"packfile") {
            break;
        }
        // v0 acknowledgements, and v2 sections before the pack (acknowledgments,
        // shallow-info, wanted-refs): nothing polld needs.
        let is_band = matches!(line.first(), Some(1..=3));
        if is_band {
            // A v0 server: the pack has started.
            demultiplex(&line, pack).await?;
            break;
        }
    }
    loop {
        match reader.next().await? {
            Pkt::Flush => return Ok(()),
            Pkt::Data(line) => demultiplex(&line, pack).await?,
            other => return Err(format!("malformed pack stream: {other:?}")),
        }
    }
}

/// One side-band pkt-line: the pack on band 1, progress on 2, a fatal error on 3.
async fn demultiplex(line: &[u8], pack: &mut impl PackSink) -> Result<(), String> {
    match line.split_first() {
        Some((1, data)) => pack.write(data).await,
        Some((2, _)) => Ok(()),
        Some((3, message)) => Err(format!(
            "the server says: {}",
            String::from_utf8_lossy(message).trim_end()
        )),
        _ => Err("malformed side-band line".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(bytes: &[u8]) -> PktReader<&[u8]> {
        PktReader::new(bytes, None, "listing")
    }

    fn pkts(lines: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for line in lines {
            match *line {
                b"0000" | b"0001" => out.extend_from_slice(line),
                data => pkt::push(&mut out, data),
            }
        }
        out
    }

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";

    #[tokio::test]
    async fn reads_a_v2_greeting_and_a_v0_advertisement() {
        let v2 = pkts(&[
            b"version 2\n",
            b"agent=git/2.47\n",
            b"ls-refs=unborn\n",
            b"fetch=shallow\n",
            b"object-format=sha1\n",
            b"0000",
        ]);
        let Greeting::V2(capabilities) = read_greeting(&mut reader(&v2)).await.unwrap() else {
            panic!("v2");
        };
        assert!(capabilities.usable().unwrap());
        let request = ls_refs_request(&capabilities, &["refs/heads/main".into()]);
        let text = String::from_utf8_lossy(&request);
        assert!(text.starts_with("0014command=ls-refs\n"), "{text}");
        assert!(text.contains("agent=polld/") && text.contains("object-format=sha1\n0001"));
        assert!(text.ends_with("ref-prefix refs/heads/main\n0000"), "{text}");

        let first = format!(
            "{A} HEAD\0multi_ack side-band-64k ofs-delta symref=HEAD:refs/heads/main agent=git/2\n"
        );
        let tag = format!("{A} refs/tags/v1\n");
        let peeled = format!("{B} refs/tags/v1^{{}}\n");
        let v0 = pkts(&[
            b"# service=git-upload-pack\n",
            b"0000",
            first.as_bytes(),
            tag.as_bytes(),
            peeled.as_bytes(),
            b"0000",
        ]);
        let Greeting::V0(listed) = read_greeting(&mut reader(&v0)).await.unwrap() else {
            panic!("v0");
        };
        assert_eq!(listed.head.as_deref(), Some("refs/heads/main"));
        let names: Vec<&str> = listed.refs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["HEAD", "refs/tags/v1", "refs/tags/v1^{}"]);
        assert!(fetch_request_v0(&listed.capabilities, &[Oid::from_str(A).unwrap()], &[]).is_ok());
        assert!(fetch_request_v0(&[], &[Oid::from_str(A).unwrap()], &[]).is_err());

        let sha256 = pkts(&[
            b"version 2\n",
            b"ls-refs\n",
            b"fetch\n",
            b"object-format=sha256\n",
            b"0000",
        ]);
        let Greeting::V2(capabilities) = read_greeting(&mut reader(&sha256)).await.unwrap() else {
            panic!("v2");
        };
        assert!(capabilities.usable().is_err());
        let error = read_greeting(&mut reader(&pkts(&[b"ERR no such repository\n"]))).await;
        assert!(error.unwrap_err().contains("no such repository"));
    }

    #[tokio::test]
    async fn reads_ls_refs_with_head_and_peeled_tags() {
        let head = format!("{A} HEAD symref-target:refs/heads/main\n");
        let main = format!("{A} refs/heads/main\n");
        let tag = format!("{B} refs/tags/v1 peeled:{A}\n");
        let answer = pkts(&[head.as_bytes(), main.as_bytes(), tag.as_bytes(), b"0000"]);
        let listed = read_ls_refs(&mut reader(&answer)).await.unwrap();
        assert_eq!(listed.head.as_deref(), Some("refs/heads/main"));
        let names: Vec<&str> = listed.refs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "refs/heads/main",
                "refs/heads/main",
                "refs/tags/v1",
                "refs/tags/v1^{}"
            ]
        );
        assert!(
            read_ls_refs(&mut reader(&pkts(&[b"nonsense\n", b"0000"])))
                .await
                .is_err()
        );
    }

    impl PackSink for Vec<u8> {
        async fn write(&mut self, data: &[u8]) -> Result<(), String> {
            self.extend_from_slice(data);
            Ok(())
        }
    }

    #[tokio::test]
    async fn reads_a_pack_from_either_protocol() {
        let band = |b: u8, data: &[u8]| {
            let mut line = vec![b];
            line.extend_from_slice(data);
            line
        };
        let v2 = pkts(&[
            b"packfile\n",
            &band(2, b"counting\n"),
            &band(1, b"PACK"),
            &band(1, b"data"),
            b"0000",
        ]);
        let mut got = Vec::new();
        read_pack(&mut reader(&v2), &mut got).await.unwrap();
        assert_eq!(got, b"PACKdata");

        let v0 = pkts(&[b"NAK\n", &band(1, b"PACK"), b"0000"]);
        let mut got = Vec::new();
        read_pack(&mut reader(&v0), &mut got).await.unwrap();
        assert_eq!(got, b"PACK");

        let failed = pkts(&[
            b"packfile\n",
            &band(3, b"upload-pack: not our ref\n"),
            b"0000",
        ]);
        let error = read_pack(&mut reader(&failed), &mut Vec::new()).await;
        assert!(error.unwrap_err().contains("not our ref"));
    }
}
