//! Where fetched media is kept (docs/architecture.md, "The network"): a small trait, and a
//! directory on disk for development and tests. Production keeps media in object storage (an
//! S3-compatible bucket, one object per `<tenant>/<media id>` key, server-side encryption,
//! a lifecycle rule matching the retention), behind the same trait.

use std::path::PathBuf;

use futures::future::BoxFuture;

pub trait MediaStore: Send + Sync + 'static {
    /// Keeps a tenant's file; the key to read it by.
    fn put<'a>(
        &'a self,
        tenant_id: &'a str,
        media_id: &'a str,
        data: &'a [u8],
    ) -> BoxFuture<'a, std::io::Result<String>>;

    /// The file kept under `key`.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, std::io::Result<Vec<u8>>>;
}

/// Files under a directory: `<root>/<tenant>/<media id>`, written to a temporary name and
/// renamed, so a reader never sees half a file. Tenant ids and media ids are checked to be
/// plain names before they get here.
pub struct DirStore {
    root: PathBuf,
}

impl DirStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
}

fn plain(name: &str) -> std::io::Result<&str> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(name)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{name:?} is not a plain name"),
        ))
    }
}

impl MediaStore for DirStore {
    fn put<'a>(
        &'a self,
        tenant_id: &'a str,
        media_id: &'a str,
        data: &'a [u8],
    ) -> BoxFuture<'a, std::io::Result<String>> {
        Box::pin(async move {
            let dir = self.root.join(plain(tenant_id)?);
            tokio::fs::create_dir_all(&dir).await?;
            let media = plain(media_id)?;
            let part = dir.join(format!(".{media}.part"));
            tokio::fs::write(&part, data).await?;
            tokio::fs::rename(&part, dir.join(media)).await?;
            Ok(format!("{tenant_id}/{media}"))
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, std::io::Result<Vec<u8>>> {
        Box::pin(async move {
            let (tenant, media) = key.split_once('/').ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "a key is tenant/media")
            })?;
            tokio::fs::read(self.root.join(plain(tenant)?).join(plain(media)?)).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_put_is_read_back_and_odd_names_are_refused() -> std::io::Result<()> {
        let root = std::env::temp_dir().join(format!("finestra-media-{}", rand::random::<u64>()));
        let store = DirStore::new(&root);
        let key = store.put("t-1", "123456", b"hello").await?;
        assert_eq!(key, "t-1/123456");
        assert_eq!(store.get(&key).await?, b"hello");
        assert!(store.put("..", "1", b"x").await.is_err());
        assert!(store.put("t-1", "../x", b"x").await.is_err());
        assert!(store.get("t-1/../../etc/passwd").await.is_err());
        tokio::fs::remove_dir_all(root).await
    }
}
