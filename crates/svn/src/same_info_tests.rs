//! The cheap check and `svn info` give the same [`Info`] on the same repository states,
//! over svnserve and over Apache with mod_dav_svn: the root, a URL below it, a path
//! with a space and non-ASCII, across a branch copy (the youngest revision moves, the
//! polled path's last change does not) and a commit.

use std::path::Path;
use std::time::Duration;

use polld_test_support::svn::{SvnHttpServer, SvnRepo, Svnserve};

use crate::LogContext;
use crate::check::CheapCheck;
use crate::command::{Login, Svn};
use crate::info::{self, Info};
use crate::location::Location;

const LOG: LogContext<'static> = LogContext {
    poller: "same-info",
    repo: "(test)",
};

/// One polled URL, asked both ways; the check is kept across states, as a poller's is.
struct Both {
    location: Location,
    check: CheapCheck,
}

impl Both {
    fn new(url: &str) -> Both {
        let location = Location::parse(url, Path::new("/")).unwrap();
        let check = CheapCheck::new(&location, None, Duration::from_secs(30));
        Both { location, check }
    }

    async fn by_svn(&self, svn: &Svn) -> Info {
        let target = format!("{}@", self.location.url);
        let out = svn
            .run("info", &[], &target, 1 << 20, &Login::default(), &LOG)
            .await
            .unwrap();
        info::parse(&out).unwrap()
    }

    async fn by_check(&self) -> Info {
        let info = self.check.info(&Login::default(), &LOG).await.unwrap();
        info.unwrap_or_else(|| panic!("the check answers for {}", self.location.url))
    }

    async fn assert_same(&self, svn: &Svn) -> Info {
        let expected = self.by_svn(svn).await;
        for round in ["fresh", "remembered"] {
            let got = self.by_check().await;
            assert_eq!(got, expected, "{} ({round})", self.location.url);
            assert_eq!(got.prefix().unwrap(), expected.prefix().unwrap());
        }
        expected
    }
}

#[tokio::test]
async fn the_check_and_svn_info_agree() {
    let repo = SvnRepo::with_standard_layout();
    repo.put(
        &[("project/dé x/README", "p\n")],
        "A project below the root",
    );
    let svnserve = Svnserve::start(repo.dir.path());
    let apache = SvnHttpServer::start(repo.dir.path(), None);
    let state = tempfile::tempdir().unwrap();
    let svn = Svn {
        config_dir: state.path().join("svn-config"),
        timeout: Duration::from_secs(30),
        ca_file: None,
    };
    let paths = [
        "repo",
        "repo/trunk",
        "repo/project/d%C3%A9%20x",
        "repo/branches",
    ];
    let all: Vec<Both> = paths
        .iter()
        .flat_map(|path| [Both::new(&svnserve.url(path)), Both::new(&apache.url(path))])
        .collect();

    for both in &all {
        both.assert_same(&svn).await;
    }
    let before = all[2].by_check().await;
    assert_eq!((before.youngest, before.last_changed), (3, 1), "trunk");

    // A branch copy: the youngest revision moves, trunk's last change does not.
    repo.copy("trunk", "branches/b", "Branch b");
    for both in &all {
        both.assert_same(&svn).await;
    }
    let trunk = all[3].by_check().await;
    assert_eq!(
        (trunk.youngest, trunk.last_changed),
        (4, 1),
        "trunk over http"
    );
    assert_eq!(all[6].by_check().await.last_changed, 4, "branches");

    repo.put(&[("trunk/a", "a\n")], "On trunk");
    for both in &all {
        both.assert_same(&svn).await;
    }
    assert_eq!(all[2].by_check().await.last_changed, 5);
    assert_eq!(
        all[4].by_check().await.last_changed,
        3,
        "the project did not move"
    );
}
