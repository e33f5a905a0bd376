#[dataflow::model]
pub struct Post {
    pub id: String,
    #[field(references = "User", on_delete = "set_null")]
    pub author_id: String,
}

fn main() {}
