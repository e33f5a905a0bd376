// Every model option and field attribute the reference documents, together.
use dataflow::schema::{FieldType, Generated, OnDelete};
use dataflow::Model;

#[dataflow::model]
pub struct Author {
    pub id: String,
}

#[dataflow::model(table = "articles", soft_delete, timestamps = false, audit, versioned, cache_ttl = "5m")]
pub struct Article {
    #[field(primary_key)]
    pub key: i64,
    #[field(unique, max_length = 120, column = "headline", renamed_from = "title")]
    pub heading: String,
    #[field(references = "Author", on_delete = "set_null", index)]
    pub author_id: Option<String>,
    #[field(default = 0)]
    pub views: i32,
    #[field(default = -1.5)]
    pub score: f64,
    #[field(default = "draft")]
    pub status: String,
    #[field(sensitive)]
    pub secret: Option<String>,
    pub body: Option<serde_json::Value>,
    pub published_on: Option<chrono::NaiveDate>,
    #[field(skip)]
    pub cached: Vec<String>,
}

fn main() {
    let s = Article::SCHEMA;
    assert_eq!(s.table, "articles");
    assert_eq!(s.primary_key().name, "key");
    assert_eq!(s.primary_key().generated, Generated::AutoIncrement);
    let heading = s.field("heading").unwrap();
    assert_eq!((heading.column, heading.max_length), ("headline", Some(120)));
    let author = s.field("author_id").unwrap().references.unwrap();
    assert_eq!((author.model, author.on_delete), ("Author", OnDelete::SetNull));
    assert_eq!(s.field("body").unwrap().ty, FieldType::Json);
    assert!(s.field("cached").is_none());
    assert_eq!(s.fields.last().unwrap().generated, Generated::DeletedAt);
    assert!(s.field("secret").unwrap().sensitive && !heading.sensitive);
    assert_eq!(s.field("version").unwrap().generated, Generated::Version);
    assert_eq!((s.options.audit, s.options.versioned), (Some(true), true));
    assert_eq!(Author::SCHEMA.table, "authors");
}
