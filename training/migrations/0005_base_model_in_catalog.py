# BaseModel moved to the catalog app (same table): point the foreign keys at it, then drop it from this app's state.

from django.db import migrations, models
import django.db.models.deletion


class Migration(migrations.Migration):

    dependencies = [
        ('catalog', '0001_initial'),
        ('classifier', '0002_base_model_in_catalog'),
        ('training', '0004_trainingtask_evaluate_on_success'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name='trainingtask',
                    name='base_model',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT,
                                            related_name='training_tasks', to='catalog.basemodel'),
                ),
                migrations.AlterField(
                    model_name='adapter',
                    name='base_model',
                    field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT,
                                            related_name='adapters', to='catalog.basemodel'),
                ),
                migrations.AlterField(
                    model_name='mergejob',
                    name='result',
                    field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL,
                                            related_name='merged_from', to='catalog.basemodel'),
                ),
                migrations.DeleteModel(name='BaseModel'),
            ],
            database_operations=[],
        ),
    ]
