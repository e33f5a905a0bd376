#[dataflow::model]
pub struct Session {
    pub id: String,
    #[field(on_delete = "cascade")]
    pub user_id: String,
}

fn main() {}
