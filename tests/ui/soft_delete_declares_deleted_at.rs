#[dataflow::model(soft_delete)]
pub struct Note {
    pub id: String,
    pub deleted_at: Option<chrono::DateTime<chrono::Utc>>,
}

fn main() {}
