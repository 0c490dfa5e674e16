//! A page of the files list on the local store, as an owner's file count grows.
//!
//! `cargo bench --bench store`. The store indexes its directory once at open, so a page of
//! 100 costs the same at 1,000 and at 20,000 files (the listing used to read, stat and sort
//! the whole directory on every page: 111 ms per page at 20,000 files).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use image_gateway::auth::UserId;
use image_gateway::store::{FileCursor, FileKey, FileStore, LocalFileStore};

fn store_with(files: usize) -> (LocalFileStore, FileCursor) {
    let root = std::env::temp_dir().join(format!("igw-bench-store-{}", uuid::Uuid::new_v4()));
    let owner = UserId::new("alice").expect("user");
    let dir = root.join("files/alice");
    std::fs::create_dir_all(&dir).expect("dir");
    for i in 0..files {
        let key = FileKey::new(&owner, uuid::Uuid::new_v4(), &format!("{i}.png"));
        std::fs::write(root.join(key.as_str()), b"png").expect("file");
    }
    let store = LocalFileStore::open(&root).expect("open");
    let middle = runtime()
        .block_on(store.list(&owner, None, files / 2))
        .expect("page")
        .next()
        .expect("a cursor in the middle");
    (store, middle)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

fn bench(c: &mut Criterion) {
    let runtime = runtime();
    let owner = UserId::new("alice").expect("user");
    let mut group = c.benchmark_group("files_list_page_of_100");
    for files in [1_000, 20_000] {
        let (store, middle) = store_with(files);
        group.bench_with_input(BenchmarkId::from_parameter(files), &files, |b, _| {
            b.iter(|| {
                runtime
                    .block_on(store.list(&owner, Some(&middle), 100))
                    .expect("page")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
