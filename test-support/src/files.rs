//! Files a test writes for a binary to read (a ScaledObject and its Deployment, a CSV of
//! arrivals), in a directory of their own, removed when the test is done with them.

use std::path::PathBuf;

/// A directory of files, removed on drop.
pub struct Files(PathBuf);

impl Files {
    /// Writes `files` (name, text) into a new directory, named after `name` and this process so
    /// that tests running at once never share one.
    pub fn new(name: &str, files: &[(&str, &str)]) -> Self {
        let dir = std::env::temp_dir().join(format!("devstack-test-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the test's directory");
        for (file, text) in files {
            std::fs::write(dir.join(file), text).expect("write a test file");
        }
        Self(dir)
    }

    /// The path of `file` in the directory (which need not exist yet), as an argument.
    pub fn path(&self, file: &str) -> String {
        self.0
            .join(file)
            .to_str()
            .expect("a UTF-8 temporary directory")
            .to_owned()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
